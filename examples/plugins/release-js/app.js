// An example idem plugin in JavaScript, the same step as examples/plugins/release (Rust):
// ensure the release `tag` exists at `api` with these `assets` (files under the root), each
// with the content of its file. Idempotent by checking first: one GET of the release, then a
// POST only when the release is missing and a PUT only for an asset whose SHA-256 differs. A
// second run sends one GET and nothing else.
//
// The API (the test server in host/tests/it/http.rs speaks it):
// `GET /releases/TAG` -> 404, or 200 `{"tag": TAG, "assets": {NAME: SHA256}}`;
// `POST /releases` with `{"tag": TAG}` -> 201; `PUT /releases/TAG/assets/NAME` with the bytes.
//
// Built by componentize-js with its default flags (`npm run build`), so `fetch` is
// StarlingMonkey's, on top of `wasi:http/outgoing-handler`, which idem checks against the
// step's `hosts:`. `run` is an async function: componentize-js runs the event loop until its
// promise settles, and the export stays the synchronous `run` of the WIT.
//
// Under `idem plan` the same code runs: the host sends the GET and answers the POST and PUTs
// itself (202 with `idem-dry-run: 1`), recording them as changes. Redirects are followed here,
// by the plugin (up to 5), and every hop is checked by the host against `hosts:`.

import { read } from "idem:plugin/fs@0.1.0";

const FIELDS = ["api", "tag", "assets"];

// A step error: thrown (or the promise rejected with it), componentize-js returns it as the
// `err` of `run`'s result, a WIT `step-error` record read from its `message` and `cause`
// properties (an `Error` thrown works alike, with no cause).
class StepError {
  constructor(message) {
    this.message = message;
    this.cause = undefined;
  }
}

function fail(message) {
  return new StepError(message);
}

// The host's error of a failed idem import call, in words: componentize-js throws an
// object whose `payload` is the WIT `error` variant, `{tag: "not-found", val: "..."}`.
function hostError(e) {
  const p = e && e.payload;
  return p && typeof p.tag === "string" ? `${p.tag}: ${p.val ?? ""}` : String(e);
}

function parseConfig(text) {
  let c;
  try {
    c = JSON.parse(text);
  } catch (e) {
    throw fail(`config: ${e.message} (it takes api, tag, assets)`);
  }
  if (c === null || typeof c !== "object" || Array.isArray(c)) {
    throw fail("config: expected a mapping (it takes api, tag, assets)");
  }
  for (const k of Object.keys(c)) {
    if (!FIELDS.includes(k)) {
      throw fail(`config: unknown field \`${k}\` (it takes api, tag, assets)`);
    }
  }
  for (const k of ["api", "tag"]) {
    if (typeof c[k] !== "string") {
      throw fail(`config: \`${k}\` must be a string (it takes api, tag, assets)`);
    }
  }
  const assets = c.assets ?? {};
  if (typeof assets !== "object" || Array.isArray(assets)) {
    throw fail("config: `assets` must map asset names to files");
  }
  return { api: c.api, tag: c.tag, assets };
}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

// Send `method url` with `body`, following up to 5 redirects; the whole response.
async function send(method, url, body) {
  for (let hop = 0; hop <= 5; hop++) {
    const what = `${method} ${url}`;
    const init = { method, redirect: "manual" };
    if (body !== undefined) {
      init.body = body;
      init.headers = { "content-type": "application/octet-stream" };
    }
    let r;
    try {
      r = await fetch(url, init);
    } catch (e) {
      throw fail(`${what}: ${e.message ?? e}`);
    }
    const location = r.headers.get("location");
    if ([301, 302, 303, 307, 308].includes(r.status) && location) {
      url = new URL(location, url).href;
      continue;
    }
    const bytes = new Uint8Array(await r.arrayBuffer());
    return {
      status: r.status,
      body: bytes,
      // The host answered for the server: a dry run does not send this method.
      dryRun: r.headers.get("idem-dry-run") !== null,
      what,
    };
  }
  throw fail(`${method} ${url}: more than 5 redirects`);
}

function expectSuccess(r, doing) {
  if (r.status < 200 || r.status >= 300) {
    const text = new TextDecoder().decode(r.body);
    throw fail(`${doing}: ${r.what} answered ${r.status}: ${text}`);
  }
}

async function ensureRelease(configText) {
  const config = parseConfig(configText);
  const base = config.api.replace(/\/+$/, "");
  const releaseUrl = `${base}/releases/${config.tag}`;
  const got = await send("GET", releaseUrl);
  let created = 0n;
  let uploaded = 0n;
  let dry = false;
  let listed = {};
  if (got.status === 200) {
    try {
      listed = JSON.parse(new TextDecoder().decode(got.body)).assets ?? {};
    } catch (e) {
      throw fail(`GET ${releaseUrl}: not a release: ${e.message}`);
    }
  } else if (got.status === 404) {
    const body = new TextEncoder().encode(JSON.stringify({ tag: config.tag }));
    const r = await send("POST", `${base}/releases`, body);
    expectSuccess(r, "creating the release");
    dry ||= r.dryRun;
    created = 1n;
  } else {
    throw fail(`GET ${releaseUrl}: status ${got.status}`);
  }
  // In name order, as the Rust example (a BTreeMap) does.
  for (const name of Object.keys(config.assets).sort()) {
    const path = config.assets[name];
    let content;
    try {
      content = read(path);
    } catch (e) {
      throw fail(`reading ${path}: ${hostError(e)}`);
    }
    const sha = hex(await crypto.subtle.digest("SHA-256", content));
    if (listed[name] === sha) {
      continue;
    }
    const r = await send("PUT", `${releaseUrl}/assets/${name}`, content);
    expectSuccess(r, `uploading ${name}`);
    dry ||= r.dryRun;
    uploaded += 1n;
  }
  const verb = dry ? "would be " : "";
  let message;
  if (created === 0n && uploaded === 0n) {
    message = `release ${config.tag} up to date`;
  } else if (created === 1n) {
    message = `release ${config.tag} ${verb}created with ${uploaded} assets`;
  } else {
    message = `release ${config.tag}: ${uploaded} assets ${verb}uploaded`;
  }
  return {
    counters: [
      { name: "releases created", value: created },
      { name: "assets uploaded", value: uploaded },
    ],
    failures: [],
    message,
  };
}

export const step = {
  // `run: func(config: string) -> result<step-report, step-error>`: the report returned is
  // the `ok`; a `StepError` thrown (or the promise rejected with one) is the `err`.
  async run(config) {
    return await ensureRelease(config);
  },
};
