// Headless Chromium as every browser test here starts it (playwright-core driving the system's Chromium, no
// downloaded browser): a fresh temporary profile, nothing fetched in the background, and every host name but
// 127.0.0.1 failing to resolve, so a page can only work with what the tests serve.
import { chromium } from "playwright-core";

const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-extensions",
  "--disable-dev-shm-usage",
  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
];

// launch() starts Chromium with a fresh temporary profile (a new user-data-dir), removed when it closes.
export function launch(executablePath) {
  return chromium.launch({ executablePath, headless: true, args: FLAGS, timeout: 60_000 });
}
