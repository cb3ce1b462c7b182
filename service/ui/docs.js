// Swagger UI settings of the API docs at / (docs.html): BentoML's own, without the online validator badge, which
// loads an image from validator.swagger.io whenever the server is not reached as localhost: an offline lab server's
// docs must not call out.
window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "./docs.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "StandaloneLayout",
  });
};
