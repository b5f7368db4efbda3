// Live pipeline page: while the pipeline runs, fetch the page body again every few seconds and swap it in,
// so a running attempt's epochs appear as they come. Without JavaScript the page refreshes itself (noscript).
"use strict";
(function () {
  const main = document.getElementById("pipeline");
  if (!main || !main.dataset.liveUrl) {
    return;
  }
  const url = main.dataset.liveUrl;
  const intervalMs = 3000;

  async function poll() {
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (response.ok) {
        // The fragment is rendered and escaped by the server, from this page's own origin.
        main.innerHTML = await response.text();
        if (response.headers.get("X-Pushtrain-Live") !== "true") {
          return; // the pipeline ended: the page now shows its final state
        }
      }
    } catch (error) {
      // A failed poll (the API server restarting, say) is retried at the next tick.
    }
    window.setTimeout(poll, intervalMs);
  }

  window.setTimeout(poll, intervalMs);
})();
