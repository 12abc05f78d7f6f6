// Drives Debian's Chromium with playwright-core for tests/e2e/test_web_example.py.
// Reads one JSON command per line on stdin, answers one JSON line per command on stdout:
//   {"cmd":"open","page":"a","url":"..."}            a new tab (all tabs share one profile: localStorage, cookies)
//   {"cmd":"goto","page":"a","url":"..."}
//   {"cmd":"wait","page":"a","js":"...","timeout":ms} until the expression is truthy; answers its value
//   {"cmd":"eval","page":"a","js":"..."}             the expression's value
//   {"cmd":"click","page":"a","selector":"..."}
//   {"cmd":"screenshot","page":"a","path":"..."}
// Answers {"ok":true,"value":...} or {"ok":false,"error":"..."}. EOF on stdin closes the browser.
import { createRequire } from "node:module";
import { resolve } from "node:path";
import { createInterface } from "node:readline";

const web = resolve(import.meta.dirname, "../../../web");
const { chromium } = createRequire(resolve(web, "package.json"))("playwright-core");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
// bypassCSP: the gateway's own pages forbid eval, and `wait`/`eval` evaluate the test's expressions in the page.
const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, bypassCSP: true });
const pages = new Map();
const consoleErrors = [];

async function run(command) {
  const page = pages.get(command.page);
  switch (command.cmd) {
    case "open": {
      const opened = await context.newPage();
      opened.on("pageerror", (error) => consoleErrors.push(`${command.page}: ${error.message}`));
      pages.set(command.page, opened);
      await opened.goto(command.url);
      return null;
    }
    case "goto":
      await page.goto(command.url);
      return null;
    case "wait":
      return (await page.waitForFunction(command.js, null, { timeout: command.timeout ?? 30_000 })).jsonValue();
    case "eval":
      return page.evaluate(command.js);
    case "click":
      await page.click(command.selector);
      return null;
    case "screenshot":
      await page.screenshot({ path: command.path, fullPage: true });
      return null;
    case "errors":
      return consoleErrors;
    default:
      throw new Error(`unknown command ${command.cmd}`);
  }
}

for await (const line of createInterface({ input: process.stdin })) {
  let answer;
  try {
    answer = { ok: true, value: (await run(JSON.parse(line))) ?? null };
  } catch (error) {
    answer = { ok: false, error: String(error?.message ?? error) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
await browser.close();
