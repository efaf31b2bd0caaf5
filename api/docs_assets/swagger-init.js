// Starts Swagger UI from the settings the /docs page carries in data-config, so that the page
// needs no inline script and its Content-Security-Policy can forbid them.
"use strict";

window.addEventListener("DOMContentLoaded", function () {
  var root = document.getElementById("swagger-ui");
  var config = JSON.parse(root.dataset.config);
  config.presets = [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset];
  window.ui = SwaggerUIBundle(config);
});
