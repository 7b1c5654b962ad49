// Converse.js (npm converse.js) in headless Debian Chromium, driven by
// playwright-core for tests/integration/test_converse.py. The page at
// PAGE_URL logs in over WebSocket by itself (converse.initialize with
// jid/password and auto_login). This script then does what a user does: opens
// "Start a new chat" from the contacts menu, enters PEER, types MESSAGE in the
// chat box and presses Enter; then it waits until REPLY is shown in that chat,
// saves a screenshot to SCREENSHOT and exits 0. With UPLOAD_FILE set, it
// then also sends that file in the chat (XEP-0363: the paperclip's file input,
// which Converse shows once it found the server's upload service) and waits
// until the message carrying its URL is shown. Every step goes to stdout as
// one JSON line; the browser's console goes to stderr.
//
// Environment: PAGE_URL, PEER (a bare JID), MESSAGE, REPLY, SCREENSHOT,
// UPLOAD_FILE (optional), CHROMIUM (default /usr/bin/chromium). The browser
// part is converse_browser.mjs.

import { openPage, report, sendInView, shownMessages } from "./converse_browser.mjs";

const { PAGE_URL, PEER, MESSAGE, REPLY, SCREENSHOT, UPLOAD_FILE } = process.env;

const { browser, page, fail } = await openPage(PAGE_URL, { screenshot: SCREENSHOT, totalMs: 90_000 });

let step;
try {
  // Logged in and the roster is shown: the contacts menu is there.
  step = "log in";
  const menu = page.locator("converse-roster .dropdown--contacts .dropdown-toggle");
  await menu.waitFor({ state: "visible" });
  report({ event: "logged-in" });

  step = "open chat";
  await menu.click();
  await page.locator("converse-roster a.new-chat").click();
  const modal = page.locator("converse-new-chat-modal");
  await modal.locator('input[name="jid"]').fill(PEER);
  await modal.locator('button[type="submit"]').click();
  const chat = page.locator(`converse-chat[jid="${PEER}"]`);
  const textarea = chat.locator("textarea.chat-textarea");
  await textarea.waitFor({ state: "visible" });
  report({ event: "chat-open", peer: PEER });

  step = "send";
  await sendInView(chat, MESSAGE);
  report({ event: "sent", body: MESSAGE });

  step = "receive reply";
  report({ event: "reply-shown", messages: await shownMessages(chat, REPLY) });

  if (UPLOAD_FILE) {
    step = "upload";
    const input = chat.locator("converse-chat-toolbar input.fileupload");
    await input.waitFor({ state: "attached" });
    await input.setInputFiles(UPLOAD_FILE);
    // Converse PUTs the file to the slot, then sends its GET URL as the body
    // with an out-of-band data element (XEP-0066), and shows it.
    // Shown as an image, loaded back from the server's GET URL.
    const image = chat.locator("img.chat-image").first();
    await image.waitFor({ state: "visible", timeout: 60_000 });
    await page.waitForFunction(
      (element) => element.complete && element.naturalWidth > 0,
      await image.elementHandle(),
    );
    report({ event: "uploaded", src: await image.getAttribute("src") });
  }

  step = "screenshot";
  await page.screenshot({ path: SCREENSHOT });
  report({ event: "screenshot", path: SCREENSHOT });
} catch (error) {
  await fail(step, error);
}

await browser.close();
report({ event: "done" });
process.exit(0);
