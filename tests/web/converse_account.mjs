// Converse.js (npm converse.js) in headless Debian Chromium, driven by
// playwright-core for tests/integration/test_converse.py: what the page shows
// of the account's data kept by the server. The page at PAGE_URL logs in over
// WebSocket by itself; then, in order:
//
// - BOOKMARK_NAME: opens the groupchats menu's "Bookmarks" list and waits
//   until a bookmark of that name is shown (Converse fetched the bookmarks,
//   XEP-0402 when the account announces urn:xmpp:bookmarks:1#compat);
// - PEER and HISTORY (a JSON list of texts): opens the chat with PEER and
//   waits until every text is shown (Converse fetched them from the archive,
//   XEP-0313: nothing was delivered to this session);
// - ROOM, NICK, ROOM_MESSAGE, ROOM_REPLY: joins the room ROOM as NICK from
//   the "Add groupchat" dialog (XEP-0045), sends ROOM_MESSAGE and waits until
//   ROOM_REPLY is shown in the room.
//
// Each step goes to stdout as one JSON line (with the texts the page shows);
// the browser's console goes to stderr; a screenshot is saved to SCREENSHOT.
// Environment: PAGE_URL, SCREENSHOT, CHROMIUM (default /usr/bin/chromium),
// and the optional ones above. The browser part is converse_browser.mjs.

import { openPage, report, sendInView, shownMessages } from "./converse_browser.mjs";

const { PAGE_URL, SCREENSHOT, BOOKMARK_NAME, PEER, ROOM, NICK, ROOM_MESSAGE, ROOM_REPLY } = process.env;
const HISTORY = process.env.HISTORY ? JSON.parse(process.env.HISTORY) : [];

const { browser, page, fail } = await openPage(PAGE_URL, { screenshot: SCREENSHOT, totalMs: 150_000 });

let step;
try {
  step = "log in";
  const menu = page.locator("converse-roster .dropdown--contacts .dropdown-toggle");
  await menu.waitFor({ state: "visible" });
  report({ event: "logged-in" });

  if (BOOKMARK_NAME) {
    step = "bookmarks";
    await page.locator("converse-rooms-list converse-dropdown .dropdown-toggle").click();
    await page.locator("converse-rooms-list a.show-bookmark-list-modal").click();
    const modal = page.locator("converse-bookmark-list-modal");
    await modal.locator("a.open-room", { hasText: BOOKMARK_NAME }).first().waitFor({ state: "visible" });
    const shown = await modal.locator("a.open-room").allInnerTexts();
    report({ event: "bookmarks-shown", bookmarks: shown.map((text) => text.trim()) });
    await page.keyboard.press("Escape");
    await modal.locator("a.open-room").first().waitFor({ state: "hidden" });
  }

  if (PEER) {
    step = "history";
    await menu.click();
    await page.locator("converse-roster a.new-chat").click();
    const modal = page.locator("converse-new-chat-modal");
    await modal.locator('input[name="jid"]').fill(PEER);
    await modal.locator('button[type="submit"]').click();
    const chat = page.locator(`converse-chat[jid="${PEER}"]`);
    for (const text of HISTORY) {
      await chat.locator(".chat-msg__text", { hasText: text }).first().waitFor({ state: "visible" });
    }
    const shown = await chat.locator(".chat-msg__text").allInnerTexts();
    report({ event: "history-shown", messages: shown.map((text) => text.trim()) });
  }

  if (ROOM) {
    step = "join room";
    await page.locator("converse-rooms-list converse-dropdown .dropdown-toggle").click();
    await page.locator("converse-rooms-list a.show-add-muc-modal").click();
    const modal = page.locator("converse-add-muc-modal");
    const chatroom = modal.locator('input[name="chatroom"]');
    // The dialog rendered (its nickname field, when Converse knows no nick, with it).
    await chatroom.waitFor({ state: "visible" });
    const nickname = modal.locator('input[name="nickname"]');
    if (await nickname.count()) {
      await nickname.fill(NICK);
    }
    await chatroom.fill(ROOM);
    await modal.locator('form input[type="submit"]').click();
    const muc = page.locator(`converse-muc[jid="${ROOM}"]`);
    const textarea = muc.locator("textarea.chat-textarea");
    await textarea.waitFor({ state: "visible" });
    report({ event: "room-joined", room: ROOM });

    step = "room message";
    await sendInView(muc, ROOM_MESSAGE);
    report({ event: "room-sent", body: ROOM_MESSAGE });

    step = "room reply";
    report({ event: "room-shown", messages: await shownMessages(muc, ROOM_REPLY) });
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
