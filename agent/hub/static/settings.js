// The Settings tab: alerts for this browser (every state said in words, see alerts.js)
// and installing the viewer on a phone's home screen.

import { alertState, disableAlerts, enableAlerts, registerWorker } from './alerts.js';

const $ = (id) => document.getElementById(id);

export class SettingsView {
  // app: {api, showBanner(message, kind, options), errors: [] (the page's error log)}
  constructor(app) {
    this.app = app;
    this.alerts = null; // the last AlertState seen
    this._install = null;
    $('alerts-on').addEventListener('click', () => this.enable());
    $('alerts-off').addEventListener('click', () => this.disable());
    $('install').addEventListener('click', () => this.install());
    window.addEventListener('beforeinstallprompt', (event) => {
      event.preventDefault(); // offered by our own button, here
      this._install = event;
      $('install').hidden = false;
    });
  }

  async update({ problem = null } = {}) {
    // Registered first: an alert's click finds this page, and a subscription is found.
    await registerWorker().catch(() => null);
    const state = await alertState();
    this.alerts = state.state;
    $('alerts-on').hidden = !state.canEnable && !problem;
    $('alerts-on').disabled = !state.canEnable;
    $('alerts-off').hidden = !state.canDisable;
    this._say(problem || state.message, problem ? 'error' : state.kind);
  }

  async enable() {
    $('alerts-on').disabled = true;
    let problem = null;
    try {
      await enableAlerts(this.app.api, (step) => this._say(step, 'info'));
      this.app.showBanner('Alerts are on: this browser will be told when a device raises one.', 'info', { sticky: false });
    } catch (err) {
      problem = `Could not enable alerts: ${err.message || err}`;
      this.app.showBanner(problem);
    } finally {
      $('alerts-on').disabled = false;
      await this.update({ problem });
    }
  }

  async disable() {
    $('alerts-off').disabled = true;
    let problem = null;
    try {
      await disableAlerts(this.app.api);
      this.app.showBanner('Alerts are off for this browser.', 'info', { sticky: false });
    } catch (err) {
      problem = `Could not disable alerts: ${err.message || err}`;
      this.app.showBanner(problem);
    } finally {
      $('alerts-off').disabled = false;
      await this.update({ problem });
    }
  }

  async install() {
    const prompt = this._install;
    if (!prompt) return;
    prompt.prompt();
    await prompt.userChoice.catch(() => null);
    this._install = null;
    $('install').hidden = true;
  }

  _say(text, kind) {
    $('alerts-state').textContent = text;
    $('alerts-state').dataset.kind = kind;
  }
}
