// What the Converse.js scripts (converse_chat.mjs, converse_account.mjs)
// share: headless Debian Chromium through playwright-core, a page on
// PAGE_URL with no network beyond this machine, its console on stderr, each
// step reported to stdout as one JSON line, and a failure (or the overall
// deadline) reported with the page's DOM and a screenshot.

import { chromium } from "playwright-core";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

export function report(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

/**
 * Open `pageUrl` in a new browser. Returns the browser, the page and
 * `fail(step, error)`, which reports the failed step, saves the DOM and a
 * screenshot to `screenshot` and exits 1. After `totalMs` the script exits 2.
 */
export async function openPage(pageUrl, { screenshot, totalMs, stepMs = 30_000 }) {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  let page;
  const timer = setTimeout(async () => {
    report({ event: "timeout" });
    if (page) {
      await page.screenshot({ path: screenshot }).catch(() => {});
    }
    process.exit(2);
  }, totalMs);
  timer.unref();

  async function fail(step, error) {
    report({ event: "error", step, message: String(error) });
    if (page) {
      const dom = await page
        .evaluate(() => (document.querySelector("converse-root") || document.body).outerHTML)
        .catch(() => "");
      process.stderr.write(`[dom] ${dom}\n`);
      await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
    }
    await browser.close().catch(() => {});
    process.exit(1);
  }

  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    page = await context.newPage();
    page.setDefaultTimeout(stepMs);
    page.on("console", (message) => process.stderr.write(`[console.${message.type()}] ${message.text()}\n`));
    page.on("pageerror", (error) => process.stderr.write(`[pageerror] ${error}\n`));
    // No network beyond this machine: the page, its assets and the server are local.
    await context.route(/^https?:\/\/(?!127\.0\.0\.1[:/])/, (route) => route.abort("blockedbyclient"));
    page.on("requestfailed", (request) =>
      process.stderr.write(`[requestfailed] ${request.url()} ${request.failure()?.errorText}\n`),
    );
    page.on("websocket", (ws) => report({ event: "websocket", url: ws.url() }));
    await page.goto(pageUrl);
  } catch (error) {
    await fail("open page", error);
  }
  return { browser, page, fail };
}

/** Type `text` in the message box of `view` (a converse-chat or a
 * converse-muc), press Enter, and wait until the view shows it. */
export async function sendInView(view, text) {
  const textarea = view.locator("textarea.chat-textarea");
  await textarea.click();
  await textarea.fill(text);
  await textarea.press("Enter");
  await view.locator(".chat-msg__text", { hasText: text }).first().waitFor({ state: "visible" });
}

/** Once `view` shows `text`: the texts of all the messages it shows. */
export async function shownMessages(view, text, timeout = 60_000) {
  await view.locator(".chat-msg__text", { hasText: text }).first().waitFor({ state: "visible", timeout });
  const shown = await view.locator(".chat-msg__text").allInnerTexts();
  return shown.map((shownText) => shownText.trim());
}
