export { serve, type Running } from './serve.js';
export { resolveSettings, readConfigFile, SETTINGS, SettingsError, envName, LOG_LEVELS, type Settings, type LogLevel } from './settings.js';
export { demoPage, installDemo, type Demo } from './demo.js';
