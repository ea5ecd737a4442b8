// Open a page in the system's Chromium and report what it did, for tests/test_browser.py.
// Usage: node drive.mjs URL flush|close. "flush": print the page's #status once it says how
// the send went. "close": close the page as soon as it has loaded (its events still queued),
// then give the browser time (generous: the machine may be loaded) to finish the
// page's keepalive request, its preflight first.
import { chromium } from "playwright-core";

const [url, mode] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage();
  page.on("console", (message) => console.error(`console: ${message.text()}`));
  await page.goto(url, { waitUntil: "load" });
  if (mode === "close") {
    // A page open for a while has already sent a batch, so its browser holds the preflight's
    // answer. Do the same (an empty batch, refused, stores nothing), then close: the queued
    // events go only through the page's keepalive request. (A first request of a page that is
    // its closing one, preflight and all, was lost in about one run in four on PostgreSQL.)
    await page.evaluate(async () => {
      const params = new URLSearchParams(location.search);
      await fetch(`${params.get("quartet")}/quartet.events.v1.EventService/SendEvents`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "connect-protocol-version": "1",
          authorization: `Bearer ${params.get("key")}`,
        },
        body: "{}",
      }).catch(() => undefined);
    });
    await page.close({ runBeforeUnload: true });
    await new Promise((resolve) => setTimeout(resolve, 8000));
    console.log("closed");
  } else {
    const status = page.locator("#status");
    await status.filter({ hasNotText: "sending" }).waitFor({ timeout: 15000 });
    console.log(await status.textContent());
  }
} finally {
  await browser.close();
}
