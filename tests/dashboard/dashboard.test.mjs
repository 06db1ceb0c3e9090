// Bulwark's dashboard in headless Chromium: log in, see a client that mosquitto_sub connected,
// kick it, see the kick in the live event stream; no Content-Security-Policy violation and no
// script error on the way. Screenshots go to $ARTIFACTS.
//
// Environment: ADMIN_URL (http://127.0.0.1:PORT), DASH_USER, DASH_PASSWORD, CLIENT_ID (the
// client mosquitto_sub connected as), ARTIFACTS (a directory), CHROMIUM (default
// /usr/bin/chromium).
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const url = env('ADMIN_URL');
const clientId = env('CLIENT_ID');
const artifacts = env('ARTIFACTS');
mkdirSync(artifacts, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), 'bulwark-chromium-'));
const WAIT = 15000;

const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
  ],
});
const problems = [];
try {
  const page = browser.pages()[0] || (await browser.newPage());
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().includes('401')) {
      problems.push(`console error: ${message.text()}`);
    }
  });
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`);
    });
  });

  // Logged out: the login form.
  await page.goto(`${url}/ui/`);
  await page.locator('#login-view').waitFor({ state: 'visible', timeout: WAIT });
  await page.screenshot({ path: join(artifacts, '1-login.png'), fullPage: true });

  // A wrong password is refused with a message, and no session.
  await page.fill('#username', env('DASH_USER'));
  await page.fill('#password', 'not-the-password');
  await page.click('#login-form button[type=submit]');
  await page.locator('#login-error').filter({ hasText: /wrong password|too many/ }).waitFor({ timeout: WAIT });
  assert.equal(await page.locator('#app-view').isVisible(), false);

  // The right one opens the dashboard.
  await page.fill('#password', env('DASH_PASSWORD'));
  await page.click('#login-form button[type=submit]');
  await page.locator('#app-view').waitFor({ state: 'visible', timeout: WAIT });
  const cookies = await browser.cookies();
  const session = cookies.find((c) => c.name === 'bulwark_session');
  assert.ok(session, 'a session cookie');
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, 'Strict');
  assert.equal(await page.evaluate(() => document.cookie.includes('bulwark_session')), false,
    'the session cookie is out of reach of scripts');
  await page.locator('#who').filter({ hasText: 'operator' }).waitFor({ timeout: WAIT });

  // The client mosquitto_sub connected, in the client list.
  const row = page.locator(`#client-rows tr[data-client-id="${clientId}"]`);
  await row.waitFor({ timeout: WAIT });
  await page.locator('#stream-state').filter({ hasText: 'live' }).waitFor({ timeout: WAIT });
  await page.screenshot({ path: join(artifacts, '2-clients.png'), fullPage: true });

  // Kick it: the live event stream shows the forced disconnect and the admin action.
  await row.getByRole('button', { name: 'Kick' }).click();
  await page.locator('#message').filter({ hasText: `${clientId} disconnected` }).waitFor({ timeout: WAIT });
  const kicked = page.locator('#event-rows tr[data-kind="forced_disconnect"]').filter({ hasText: clientId });
  await kicked.first().waitFor({ timeout: WAIT });
  const action = page.locator('#event-rows tr[data-kind="admin_action"]').filter({ hasText: '/kick' });
  await action.first().waitFor({ timeout: WAIT });
  await page.screenshot({ path: join(artifacts, '3-kicked.png'), fullPage: true });

  // A ban through the form, then lifted.
  await page.selectOption('#ban-kind', 'client_id');
  await page.fill('#ban-target', 'stolen-device');
  await page.fill('#ban-reason', 'dashboard test');
  await page.click('#ban-form button[type=submit]');
  const ban = page.locator('#ban-rows tr').filter({ hasText: 'stolen-device' });
  await ban.waitFor({ timeout: WAIT });
  await page.screenshot({ path: join(artifacts, '4-ban.png'), fullPage: true });
  await ban.getByRole('button', { name: 'Lift' }).click();
  await ban.waitFor({ state: 'detached', timeout: WAIT });

  // Log out: the session is gone, the data with it.
  await page.click('#logout');
  await page.locator('#login-view').waitFor({ state: 'visible', timeout: WAIT });
  const after = await page.evaluate(async () => (await fetch('/api/v1/clients')).status);
  assert.equal(after, 401);

  assert.deepEqual(problems, [], 'no CSP violation, page error or console error');
  console.log('dashboard: all checks passed');
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
