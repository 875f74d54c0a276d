export { serve, type Running } from './serve.js';
export { resolveSettings, SETTINGS, SettingsError, envName, type Settings } from './settings.js';
export { demoPage, installDemo } from './demo.js';
