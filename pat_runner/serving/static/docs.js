// Swagger UI for the PAT service. validatorUrl: null — otherwise Swagger UI sends the document's URL to
// validator.swagger.io for any non-loopback host name; the document is validated in our tests instead.
window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "./docs.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
  });
};
