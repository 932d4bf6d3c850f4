/* Starts a review page without inline script (the Content-Security-Policy allows none): calls
   HV.<data-call>(...<data-args>) as named by this script tag's data- attributes, which the page's
   template writes with the `boot` template global (api/ui.py). */
"use strict";
(() => {
  const tag = document.currentScript;
  const fn = tag.dataset.call.split(".").reduce((obj, name) => (obj && Object.hasOwn(obj, name) ? obj[name] : undefined), HV);
  if (typeof fn !== "function") throw new Error(`boot.js: HV.${tag.dataset.call} is not a function`);
  fn(...JSON.parse(tag.dataset.args || "[]"));
})();
