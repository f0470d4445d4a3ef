// shout: a sockets:plugin@0.2.0 `connection-handler` plugin in JavaScript.
//
// Every line of a connection is answered upper-cased; see protocol.js for the
// protocol, and README.md.
//
// How componentize-js 0.23 maps the world's export (jco conventions):
// - the exported interface `connection` is the module's export `connection`
//   (the interface name in camelCase), an object holding the resource class
//   under its PascalCase name, `Session`;
// - the WIT constructor is the class constructor; the methods `on-data` and
//   `on-end` are the methods `onData` and `onEnd` (camelCase);
// - the record `connection-info` is a plain object {peer, local}; `list<u8>`
//   is a Uint8Array (returning any view of one is fine); the record `output`
//   is a plain object {bytes, close};
// - `result<T, string>`: returning is `ok(T)`; throwing a string is
//   `err(string)` (so is throwing an object with an own `payload` property:
//   `err(payload)`). Throwing an Error object is NOT `err`: the bindings
//   re-throw it and the instance traps (seen with 0.23.0 under jco transpile: `unreachable`;
//   the host then discards the instance). So onData throws strings;
// - the host dropping the session needs no code (no destructor to write);
// - the import `log` is the module 'sockets:plugin/log@0.2.0', its `level`
//   a lowercase string ('trace' ... 'error').

import { log } from 'sockets:plugin/log@0.2.0';
import { LineTooLong, Shout } from './protocol.js';

class Session {
  #shout = new Shout();

  /** @param {{peer: string, local: string}} info */
  constructor(info) {
    log('debug', `shout: open ${info.peer}`);
  }

  /**
   * @param {Uint8Array} data
   * @returns {{bytes: Uint8Array, close: boolean}}
   */
  onData(data) {
    try {
      return this.#shout.feed(data);
    } catch (e) {
      // A string, not the Error: see the top of this file.
      throw e instanceof LineTooLong ? e.message : `shout: internal error: ${e}`;
    }
  }

  /** @returns {Uint8Array} */
  onEnd() {
    return this.#shout.end();
  }
}

export const connection = { Session };
