// @ts-check
// The errors the client rejects with. Every one is an instance of SwitchboardError's base,
// ClientError, so `catch (e) { if (e instanceof ClientError) … }` catches what the client throws
// and nothing else.

/** Status codes of answers (the contract §1.3). */
export const Status = Object.freeze({ OK: 0, ERROR: 1, INVALID_DATA: 2, PERMISSION_DENIED: 3 });

/** Base class of every error the client produces. */
export class ClientError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = 'ClientError';
  }
}

/**
 * @typedef {object} FieldError one validation problem: a JSON pointer into the request's data
 * @property {string} path
 * @property {string} message
 */

/**
 * SwitchboardError is a refusal by the server: an answer whose status_code is not 0, or an HTTP
 * error of the façade (/login, /refresh). Its fields are the answer's, named as on the wire.
 */
export class SwitchboardError extends ClientError {
  /**
   * @param {{pkg_id?: number, req_id?: string, status_code?: number, http_status?: number, msg?: string | null, data?: any}} a
   */
  constructor(a) {
    const errors = Array.isArray(a.data?.errors) ? a.data.errors : [];
    let text = a.http_status ? `switchboard: HTTP ${a.http_status}` : `switchboard: pkg_id ${a.pkg_id}: status ${a.status_code}`;
    if (a.msg) text += `: ${a.msg}`;
    for (const [i, e] of errors.entries()) {
      if (i === 3) {
        text += ` (+${errors.length - 3} more)`;
        break;
      }
      text += `; ${e.path}: ${e.message}`;
    }
    super(text);
    this.name = 'SwitchboardError';
    /** @type {number | undefined} */ this.pkg_id = a.pkg_id;
    /** @type {string | undefined} */ this.req_id = a.req_id;
    /** status_code of the answer (1, 2, 3); for an HTTP error, the one that matches its status. @type {number} */
    this.status_code = a.status_code ?? statusOfHTTP(a.http_status);
    /** @type {number | undefined} */ this.http_status = a.http_status;
    /** msg of the answer, or detail of an HTTP error. @type {string | null} */ this.msg = a.msg ?? null;
    /** data of the answer as it came (data.errors for invalid data, data.missing_roles…). */
    this.data = a.data ?? null;
    /** data.errors of an invalid-data answer (or errors of a 422). @type {FieldError[]} */
    this.errors = errors;
  }

  /** The user lacks a role (status 3, HTTP 403). */
  get permissionDenied() {
    return this.status_code === Status.PERMISSION_DENIED;
  }

  /** The request's data was refused (status 2, HTTP 422 or 409). */
  get invalidData() {
    return this.status_code === Status.INVALID_DATA;
  }

  /** A rate limit refused it (status 1 "Rate limit exceeded", HTTP 429). */
  get rateLimited() {
    return this.http_status === 429 || (!this.http_status && this.status_code === Status.ERROR && this.msg === 'Rate limit exceeded');
  }
}

/** @param {number | undefined} s */
function statusOfHTTP(s) {
  switch (s) {
    case 403: return Status.PERMISSION_DENIED;
    case 409: case 422: return Status.INVALID_DATA;
    default: return Status.ERROR;
  }
}

/** No answer within the request's timeout; the request may still run on the server. */
export class TimeoutError extends ClientError {
  /** @param {number} pkgId @param {number} ms */
  constructor(pkgId, ms) {
    super(`switchboard: pkg_id ${pkgId}: no answer within ${ms} ms`);
    this.name = 'TimeoutError';
  }
}

/**
 * The connection ended after the request was written and before its answer came: the server may
 * or may not have run it. code and reason are the connection's close (1006: none came).
 */
export class ConnectionLostError extends ClientError {
  /** @param {number} pkgId @param {number} code @param {string} reason */
  constructor(pkgId, code, reason) {
    super(`switchboard: pkg_id ${pkgId}: connection lost before the answer (close ${code}${reason ? ' ' + reason : ''})`);
    this.name = 'ConnectionLostError';
    this.code = code;
    this.reason = reason;
  }
}

/** The client was closed (close()) or gave up for good (see Client.error). */
export class ClosedError extends ClientError {
  /** @param {Error | null} [cause] */
  constructor(cause) {
    super(cause ? `switchboard: client stopped: ${cause.message}` : 'switchboard: client closed');
    this.name = 'ClosedError';
    this.cause = cause ?? undefined;
  }
}

/** Too many requests wait for a connection (options.outboundQueue); this one was not queued. */
export class QueueFullError extends ClientError {
  constructor() {
    super('switchboard: outbound queue full');
    this.name = 'QueueFullError';
  }
}

/**
 * The server closed the connection with a code that says this client sent something it cannot
 * accept (1002, 1003, 1007, 1009), options.maxClientFaults times in a row: the client stopped
 * rather than loop.
 */
export class RejectedError extends ClientError {
  /** @param {number} code @param {string} reason */
  constructor(code, reason) {
    super(`switchboard: the server keeps refusing what this client sends (close ${code}${reason ? ' ' + reason : ''})`);
    this.name = 'RejectedError';
    this.code = code;
    this.reason = reason;
  }
}

/** The token expired (close 4001, or its exp passed) and there is no getToken to get another. */
export class TokenExpiredError extends ClientError {
  constructor() {
    super('switchboard: token expired and no getToken to get another');
    this.name = 'TokenExpiredError';
  }
}
