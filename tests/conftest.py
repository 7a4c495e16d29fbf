pytest_plugins = ["tests.firebase_emulator", "tests.server", "tests.tracing"]
