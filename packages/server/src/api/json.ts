import type { ServerResponse } from 'node:http';

/** The API's error codes: stable strings a backend can branch on. */
export type ApiErrorCode =
  | 'api_disabled'
  | 'unauthorized'
  | 'not_found'
  | 'method_not_allowed'
  | 'invalid_json'
  | 'invalid_request'
  | 'internal_error'
  | 'invalid_channel'
  | 'too_large'
  | 'session_not_found'
  | 'no_history'
  | 'unavailable'
  | 'engine_unavailable';

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  sendRawJson(res, status, JSON.stringify(body), headers);
}

/** Sends text that is already JSON. */
export function sendRawJson(res: ServerResponse, status: number, text: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    'Cache-Control': 'no-store',
    ...headers,
  });
  res.end(text);
}

export function sendApiError(res: ServerResponse, status: number, code: ApiErrorCode, message: string, headers: Record<string, string> = {}): void {
  sendJson(res, status, { error: { code, message } }, headers);
}
