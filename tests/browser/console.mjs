// Drives the dispatchbox console in Debian's headless chromium (playwright-core, no
// bundled browser). Run by tests/console.rs, which starts PostgreSQL, a webhook receiver
// and the relay, makes the dead events, and checks the database afterwards.
//
// Input (environment):
//   CONSOLE_URL     the relay's admin base URL (http://127.0.0.1:PORT)
//   CONSOLE_TOKEN   the admin token
//   CONSOLE_EXPECT  JSON: {"dead": N, "retry_event_type": T, "retry_ids": [..],
//                          "hostile_event_type": S, "hostile_id": N, "replay_id": N,
//                          "select_ids": [..two dead ids on the first page..],
//                          "auto_refresh_id": N (a dead event retried behind the page's back),
//                          "slot": S, "causes": [..texts each dead reason contains..]}
//   ARTIFACTS       directory for screenshots
//   CHROMIUM        the browser binary (default /usr/bin/chromium)
//
// Every step asserts what the page shows; the first failure exits non-zero with the step's
// name, after saving a screenshot of the page as it was (failure-<step>.png).
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { chromium } from "playwright-core";

const base = process.env.CONSOLE_URL;
const token = process.env.CONSOLE_TOKEN;
const expect = JSON.parse(process.env.CONSOLE_EXPECT);
const artifacts = process.env.ARTIFACTS;
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
mkdirSync(artifacts, { recursive: true });

const STEP_TIMEOUT = 20000;
const PAGE_SIZE = 25;
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

/** Runs axe-core's WCAG 2 A/AA rules on the page (injected through the DevTools protocol,
 *  which the page's CSP does not govern) and fails on any violation. */
async function audit(target, what) {
  await target.evaluate(axeSource);
  const result = await target.evaluate(() =>
    window.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } }));
  const violations = result.violations.map((v) =>
    `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
  assert.deepEqual(violations, [], `accessibility violations on ${what}`);
  return result.passes.length;
}
let step = "launch";
const log = (text) => process.stderr.write(`console.mjs: ${text}\n`);

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // The tests run as root in CI, where chromium's sandbox cannot start.
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
let page;
const failures = [];

async function shot(name, target = page, fullPage = true) {
  await target.screenshot({ path: join(artifacts, `${name}.png`), fullPage });
}

async function run(name, body) {
  step = name;
  log(`step: ${name}`);
  await body();
}

try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  // Any CSP violation or script error is a failure.
  page.on("console", (message) => {
    if (message.type() === "error") failures.push(`console error: ${message.text()}`);
  });
  page.on("pageerror", (error) => failures.push(`page error: ${error.message}`));
  // A clock the test can move forward (time otherwise flows as usual), to see the page
  // refresh by itself without waiting 10 s.
  await page.clock.install();

  await run("token from the fragment", async () => {
    // Unencoded, as a shell script would write it: a base64 token's `+` must stay a `+`.
    const response = await page.goto(`${base}/console#token=${token}`);
    const csp = response.headers()["content-security-policy"] || "";
    assert.match(csp, /script-src 'self'/, "the page carries a strict CSP");
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
    await page.locator("#counts li.dead .n").filter({ hasText: String(expect.dead) }).waitFor();
    assert.equal(await page.evaluate(() => window.location.hash), "", "the token leaves the address bar");
    assert.equal(await page.evaluate(() => sessionStorage.getItem("dispatchbox.token")), token);
    assert.equal(await page.locator("#login").isHidden(), true);
  });

  await run("relay state", async () => {
    const state = page.locator("#relay-state");
    await state.getByText("streaming", { exact: true }).waitFor();
    await state.getByText("leader (holds the slot)").waitFor();
    await state.getByText(`${expect.slot} (active`, { exact: false }).waitFor();
    await state.getByText("Sink webhook").waitFor();
  });

  await run("dead events with their reasons", async () => {
    const rows = page.locator("#dead-list tbody tr[data-id]");
    const firstPage = Math.min(PAGE_SIZE, expect.dead);
    await rows.nth(firstPage - 1).waitFor();
    assert.equal(await rows.count(), firstPage);
    for (const cause of expect.causes) {
      assert.ok(
        (await page.locator("#dead-list td.err").filter({ hasText: cause }).count()) > 0,
        `a dead event shows the reason ${cause}`,
      );
      assert.ok(
        (await page.locator("#by-error tbody td").filter({ hasText: cause }).count()) > 0,
        `the overview groups the cause ${cause}`,
      );
    }
    const retryGroup = page.locator("#by-type tbody tr").filter({ hasText: expect.retry_event_type });
    await assert.doesNotReject(retryGroup.waitFor());
    assert.match(await retryGroup.textContent(), new RegExp(`${expect.retry_ids.length}$`));
  });

  await run("a hostile event type renders as text", async () => {
    const cell = page.locator(`#dead-list tr[data-id="${expect.hostile_id}"] td.event-type`);
    assert.equal(await cell.textContent(), expect.hostile_event_type);
    assert.equal(await cell.locator("*").count(), 0, "no element was made from the event type");
    assert.equal(await page.locator("#main img, #main script:not([src])").count(), 0);
    assert.equal(await page.evaluate(() => window.__pwned), undefined, "no injected script ran");
    await shot("console-overview");
    // The first screen only (the README's picture).
    await shot("console-top", page, false);
  });

  await run("accessibility audit of the main view", async () => {
    const passed = await audit(page, "the main view");
    log(`axe: ${passed} rules passed on the main view`);
  });

  await run("detail of the hostile event", async () => {
    await page.locator(`#dead-list tr[data-id="${expect.hostile_id}"] button`).click();
    const dialog = page.locator("#detail");
    await dialog.getByText(`Event ${expect.hostile_id}`).waitFor();
    assert.match(await page.locator("#detail-payload").textContent(), /<script>window.__pwned=2<\/script>/);
    assert.equal(await page.locator("#detail-payload *").count(), 0);
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    assert.equal(await page.locator("#detail-retry").isVisible(), true, "a dead event offers a retry");
    await shot("console-detail");
    await audit(page, "the detail dialog");
    await page.keyboard.press("Escape");
    await dialog.waitFor({ state: "hidden" });
  });

  await run("paging", async () => {
    const rows = page.locator("#dead-list tbody tr[data-id]");
    const firstIds = await rows.evaluateAll((trs) => trs.map((tr) => Number(tr.dataset.id)));
    await page.getByRole("button", { name: "Next page" }).click();
    await page.locator("#page-info").getByText("Page 2 (last)").waitFor();
    const secondIds = await rows.evaluateAll((trs) => trs.map((tr) => Number(tr.dataset.id)));
    assert.equal(firstIds.length + secondIds.length, expect.dead, "two pages hold every dead event");
    assert.ok(Math.max(...firstIds) < Math.min(...secondIds), "pages follow id order without overlap");
    await page.getByRole("button", { name: "Previous page" }).click();
    await page.locator("#page-info").getByText("Page 1").waitFor();
    assert.deepEqual(await rows.evaluateAll((trs) => trs.map((tr) => Number(tr.dataset.id))), firstIds);
  });

  await run("retry of a selection", async () => {
    for (const id of expect.select_ids) await page.getByLabel(`Select event ${id}`, { exact: true }).check();
    const button = page.getByRole("button", { name: `Retry selected (${expect.select_ids.length})` });
    await button.click();
    await page.locator("#confirm-text")
      .getByText(new RegExp(`^${expect.select_ids.length} dead events \\(${expect.select_ids.length} selected events\\)`))
      .waitFor();
    await page.getByRole("button", { name: `Retry ${expect.select_ids.length} events` }).click();
    await page.waitForFunction(() => document.getElementById("retry-result").dataset.state === "finished",
      null, { timeout: 60000 });
    assert.match(await page.locator("#retry-result").textContent(),
      new RegExp(`^Retried ${expect.select_ids.length} events: ${expect.select_ids.length} done`));
    await page.getByRole("button", { name: "Retry selected (0)" }).waitFor();
  });

  await run("filtered retry with a dry run", async () => {
    const deadEvents = page.getByRole("region", { name: "Dead events" });
    await deadEvents.getByLabel("Event type", { exact: true }).fill(expect.retry_event_type);
    await page.getByRole("button", { name: "Apply filter" }).click();
    const rows = page.locator("#dead-list tbody tr[data-id]");
    await page.locator("#list-caption").getByText("matching the filter").waitFor();
    await page.waitForFunction((n) => document.querySelectorAll("#dead-list tbody tr[data-id]").length === n,
      expect.retry_ids.length);
    assert.deepEqual(
      (await rows.evaluateAll((trs) => trs.map((tr) => Number(tr.dataset.id)))),
      expect.retry_ids,
    );
    await page.getByRole("button", { name: "Retry all matching the filter…" }).click();
    // The dry-run count, in the confirmation.
    await page.locator("#confirm-text")
      .getByText(new RegExp(`^${expect.retry_ids.length} dead events \\(event type "${expect.retry_event_type}"\\)`))
      .waitFor();
    await shot("console-retry-confirm");
    await page.getByRole("button", { name: `Retry ${expect.retry_ids.length} events` }).click();
    const result = page.locator("#retry-result");
    await page.waitForFunction(() => document.getElementById("retry-result").dataset.state === "finished",
      null, { timeout: 60000 });
    assert.match(await result.textContent(), new RegExp(`^Retried ${expect.retry_ids.length} events: ${expect.retry_ids.length} done`));
    await page.waitForFunction(() => document.querySelector("#dead-list tbody td[colspan]") !== null);
    await shot("console-retry-done");
  });

  await run("replay from the detail view", async () => {
    await page.getByLabel("Event id").fill(String(expect.replay_id));
    await page.getByRole("button", { name: "Show event" }).click();
    await page.locator("#detail-facts").getByText("done", { exact: true }).waitFor();
    await page.getByRole("button", { name: "Replay this event…" }).click();
    await page.locator("#confirm-text").getByText(/^1 delivered event \(event \d+\) will return/).waitFor();
    await page.getByRole("button", { name: "Replay 1 event" }).click();
    await page.waitForFunction(() => document.getElementById("detail-result").dataset.state === "finished",
      null, { timeout: 60000 });
    assert.match(await page.locator("#detail-result").textContent(), /^Replayed 1 event: 1 done/);
    await page.getByRole("button", { name: "Close" }).click();
    await page.locator("#detail").waitFor({ state: "hidden" });
    // Focus returns to where the dialog was opened from.
    await page.waitForFunction(() => document.activeElement && document.activeElement.id === "lookup-id");
  });

  await run("replay from the list view", async () => {
    const section = page.getByRole("region", { name: "Replay delivered events" });
    await section.getByLabel("Event type", { exact: true }).fill(expect.retry_event_type);
    await section.getByRole("button", { name: "Preview matching events" }).click();
    const n = expect.retry_ids.length;
    await page.locator("#replay-count").getByText(`${n} delivered events match.`).waitFor();
    assert.deepEqual(
      await page.locator("#replay-list tbody tr[data-id]").evaluateAll((trs) => trs.map((tr) => Number(tr.dataset.id))),
      expect.retry_ids,
    );
    await shot("console-replay-preview");
    await section.getByRole("button", { name: `Replay ${n} events…` }).click();
    await page.locator("#confirm-text")
      .getByText(new RegExp(`^${n} delivered events \\(event type "${expect.retry_event_type}"\\) will return`))
      .waitFor();
    await page.getByRole("button", { name: `Replay ${n} events`, exact: true }).click();
    await page.waitForFunction(() => document.getElementById("replay-result").dataset.state === "finished",
      null, { timeout: 60000 });
    assert.match(await page.locator("#replay-result").textContent(), new RegExp(`^Replayed ${n} events: ${n} done`));
  });

  await run("keyboard only", async () => {
    // The filter's controls are usable from the keyboard alone.
    await page.locator("#clear-filter").focus();
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => !document.getElementById("list-caption").textContent.includes("matching"));
    await page.locator("#f-error").focus();
    await page.keyboard.type("410");
    await page.keyboard.press("Enter");
    await page.locator("#list-caption").getByText("matching the filter").waitFor();
    await page.waitForFunction(() => [...document.querySelectorAll("#dead-list td.err")]
      .every((td) => td.textContent.includes("410")));
  });

  await run("counts refresh by themselves", async () => {
    // Another operator retries an event through the API; no click on this page.
    const before = Number(await page.locator("#counts li.dead .n").textContent());
    const response = await fetch(`${base}/api/dead-events/${expect.auto_refresh_id}/retry`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}` },
    });
    assert.equal(response.status, 200);
    await page.waitForTimeout(2500); // past the server's 2 s overview cache
    await page.clock.fastForward("00:11");
    await page.locator("#counts li.dead .n").filter({ hasText: new RegExp(`^${before - 1}$`) }).waitFor();
  });

  await run("phone-sized screen", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    const wide = await page.evaluate(() => [...document.querySelectorAll("body *")]
      .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1 && !e.parentElement.closest(".scroll"))
      .slice(0, 5).map((e) => `${e.tagName}#${e.id}.${e.className}`));
    assert.ok(overflow <= 1, `the page fits a phone's width (overflows by ${overflow}px: ${wide.join(", ")})`);
    await shot("console-phone");
  });

  await run("a wrong token is refused", async () => {
    const other = await browser.newContext({ viewport: { width: 1280, height: 700 } });
    const second = await other.newPage();
    second.setDefaultTimeout(STEP_TIMEOUT);
    await second.goto(`${base}/console#token=not-the-token-0000000000`);
    await second.locator("#login-error").getByText(/^The token was refused: the bearer token is wrong/).waitFor();
    assert.equal(await second.locator("#app").isHidden(), true);
    assert.equal(await second.locator("#dead-list tbody tr[data-id]").count(), 0);
    assert.equal(await second.evaluate(() => sessionStorage.getItem("dispatchbox.token")), null);
    await shot("console-wrong-token", second);
    await audit(second, "the token form");
    // The real token typed into the form opens the console.
    await second.getByLabel("Token", { exact: true }).fill(token);
    await second.getByRole("button", { name: "Open console" }).click();
    await second.locator("#counts li.dead .n").waitFor();
    await other.close();
  });

  assert.deepEqual(failures, [], "no script errors or CSP violations");
  log("all steps passed");
} catch (error) {
  log(`FAILED at step "${step}": ${error.stack || error}`);
  for (const failure of failures) log(failure);
  if (page) await shot(`failure-${step.replace(/[^a-z0-9]+/gi, "-")}`).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}
