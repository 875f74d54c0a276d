/** Who a session belongs to, as the authenticator established it at handshake. */
export interface Identity {
  /** The user id (a JWT's `sub`); compared with `{var}` segments in `user:{var}` rules. */
  id: string;
  /** Roles, for `role:<name>` rules (a JWT's `roles` array or `role` string). */
  roles: string[];
  /** Every claim, for authorization hooks. */
  claims: Record<string, unknown>;
  /** When the credentials stop being valid (ms since the epoch); the session is ended then. */
  expiresAt?: number;
}
