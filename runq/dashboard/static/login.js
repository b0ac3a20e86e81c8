// The dashboard answered 401. A token kept from earlier in this tab is tried once
// (the address bar no longer carries it after the first load); a wrong one is dropped.
"use strict";
(() => {
  const kept = sessionStorage.getItem("runq-token");
  const given = new URLSearchParams(location.search).get("token");
  if (given) {
    sessionStorage.removeItem("runq-token");
    document.getElementById("login-error").hidden = false;
  } else if (kept) {
    location.replace("/?token=" + encodeURIComponent(kept));
  }
})();
