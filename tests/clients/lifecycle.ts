// A key's whole life through openapi-fetch and the types openapi-typescript generates from
// openapi.json (`make clients`). Compiled with `tsc --strict` and run under node by
// tests/test_generated_clients.py: node lifecycle.js BASE_URL SESSION_TOKEN.
// Prints one JSON object of what it saw; any unexpected answer throws.
import createClient, { type Middleware } from "openapi-fetch";
import type { components, paths } from "./schema";

type ErrorDetails = components["schemas"]["ErrorDetails"];

const [baseUrl, session] = process.argv.slice(2);

// The session: the sb-access-token cookie (node's fetch sends a Cookie header as given).
const owner = createClient<paths>({ baseUrl, headers: { Cookie: `sb-access-token=${session}` } });

function expect<T>(what: string, value: T | undefined, response: Response): T {
  if (value === undefined) throw new Error(`${what}: unexpected ${response.status}`);
  return value;
}

// The three ways to send a key: a Bearer token, the X-API-Key header, or ?api_key= (a
// middleware, as openapi-fetch knows nothing of query-parameter security schemes).
function byBearer(key: string) {
  return createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${key}` } });
}
function byHeader(key: string) {
  return createClient<paths>({ baseUrl, headers: { "X-API-Key": key } });
}
function byQuery(key: string) {
  const client = createClient<paths>({ baseUrl });
  const apiKey: Middleware = {
    onRequest({ request }) {
      const url = new URL(request.url);
      url.searchParams.set("api_key", key);
      return new Request(url, request);
    },
  };
  client.use(apiKey);
  return client;
}

// What a client reads from a refusal's details: typed, so a misspelt field does not compile.
function refusal(details: ErrorDetails) {
  return {
    reason: details.reason ?? null,
    revoked_year: details.revoked_at?.slice(0, 4) ?? null,
    rolled: details.rolled ?? false,
    replaced_by: details.replaced_by ?? null,
    key_id: details.key_id?.toLowerCase() ?? null,
  };
}

async function whoami(client: ReturnType<typeof createClient<paths>>) {
  const { data, error, response } = await client.GET("/api/v1/whoami");
  if (data) return { status: response.status, id: data.data.id, remaining: data.data.rate_limit.minute.remaining };
  return { status: response.status, code: error?.error.code ?? null, ...refusal(expect("whoami", error, response).error.details) };
}

async function main() {
  const minted: { id: string; key: string }[] = [];
  for (const name of ["client-feed-a", "client-feed-b"]) {
    const { data, response } = await owner.POST("/api/v1/keys", { body: { name, expires_in_days: 30 } });
    const created = expect("mint", data, response).data;
    minted.push({ id: created.id, key: created.key });
  }
  const [a, b] = minted;

  // Two pages of one key each, following the cursor.
  const pages: string[][] = [];
  let cursor: string | undefined;
  do {
    const { data, response } = await owner.GET("/api/v1/keys", { params: { query: { limit: 1, cursor } } });
    const page = expect("list", data, response);
    pages.push(page.data.map((key) => key.id));
    cursor = page.meta.next_cursor ?? undefined;
  } while (cursor);

  const { data: read, response: readResponse } = await owner.GET("/api/v1/keys/{key_id}", {
    params: { path: { key_id: a.id } },
  });
  const name = expect("read", read, readResponse).data.name;

  const ways = [await whoami(byBearer(a.key)), await whoami(byHeader(a.key)), await whoami(byQuery(a.key))];

  const { data: rolled, response: rollResponse } = await owner.POST("/api/v1/keys/{key_id}/roll", {
    params: { path: { key_id: a.id } },
    body: { grace_period_minutes: 0 },
  });
  const replacement = expect("roll", rolled, rollResponse).data;
  const afterRoll = await whoami(byHeader(a.key));

  const { response: leakResponse } = await owner.POST("/api/v1/leaks", {
    body: { keys: [replacement.key], source: "https://example.com/pasted" },
  });
  const afterLeak = await whoami(byBearer(replacement.key));

  const { response: revokeResponse } = await owner.DELETE("/api/v1/keys/{key_id}", { params: { path: { key_id: b.id } } });
  const afterRevoke = await whoami(byQuery(b.key));

  const { error: notRollable, response: notRollableResponse } = await owner.POST("/api/v1/keys/{key_id}/roll", {
    params: { path: { key_id: b.id } },
    body: {},
  });
  const rollRevoked = {
    status: notRollableResponse.status,
    code: notRollable?.error.code ?? null,
    ...refusal(expect("roll a revoked key", notRollable, notRollableResponse).error.details),
  };

  const { data: events, response: eventsResponse } = await owner.GET("/api/v1/key-events");
  const trail = expect("events", events, eventsResponse).data.map((event) => ({
    type: event.type,
    key_id: event.key_id,
    replaced_by: event.details.replaced_by ?? null,
    rolled_from: event.details.rolled_from ?? null,
    source: event.details.source ?? null,
  }));

  console.log(JSON.stringify({
    minted: minted.map((key) => key.id), pages, name, ways, replacement: replacement.id, afterRoll,
    leak: leakResponse.status, afterLeak, revoke: revokeResponse.status, afterRevoke, rollRevoked, trail,
  }));
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
