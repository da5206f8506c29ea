import Ajv2020 from "ajv/dist/2020";
import addFormats from "ajv-formats";
import type { ValidateFunction } from "ajv";
import { openApiDocument } from "../../src/core/openapi";

/**
 * Every answer of the REST API, checked against the OpenAPI document the API serves
 * (`GET /api/openapi.json`, built by the same module): its route and method, status code,
 * content type and body schema. `call()` runs this on every answer, so a test that passes
 * also proves the document describes what it saw.
 */

const ROOT = "/api";
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Doc = any;

interface Route {
  template: string;
  pattern: RegExp;
  /** Path parameters: a concrete path (fewer) wins over a templated one, as OpenAPI says. */
  params: number;
}

let state: { doc: Doc; routes: Route[]; ajv: Ajv2020; validators: Map<string, ValidateFunction> } | null = null;

function load() {
  if (state) return state;
  const doc = openApiDocument(ROOT, "test") as Doc;
  const routes: Route[] = Object.keys(doc.paths).map((template) => ({
    template,
    pattern: new RegExp(`^${template.replace(/[.]/g, "\\.").replace(/\{[^}]+\}/g, "([^/]+)")}$`),
    params: (template.match(/\{/g) ?? []).length,
  }));
  routes.sort((a, b) => a.params - b.params);
  // The whole document as one schema resource: its $refs (#/components/schemas/...) resolve in it.
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats(ajv);
  ajv.addSchema(doc, "openapi.json");
  state = { doc, routes, ajv, validators: new Map() };
  return state;
}

/** The JSON-pointer escape of one reference token. */
const escape = (token: string) => token.replace(/~/g, "~0").replace(/\//g, "~1");

const mediaType = (contentType: string) => contentType.split(";")[0]!.trim().toLowerCase();

/**
 * Throws, saying what differs, when an answer does not match the document. Answers from
 * outside the API root (the admin API) are not the document's business and pass.
 */
export function checkAnswer(url: string, method: string, status: number, contentType: string | null, text: string, body: unknown): void {
  const { pathname, search } = new URL(url);
  if (pathname !== ROOT && !pathname.startsWith(`${ROOT}/`)) return;
  const route = pathname.slice(ROOT.length) || "/";
  const what = `${method.toUpperCase()} ${pathname}${search} answered ${status}`;
  const { doc, routes, ajv, validators } = load();
  const verb = method.toLowerCase();
  const matched = routes.filter((r) => r.pattern.test(route));
  const found = matched.find((r) => doc.paths[r.template][verb]);
  if (!found) {
    throw new Error(
      matched.length === 0
        ? `${what}, but the OpenAPI document has no path for ${route} (add it to src/core/openapi.ts, or opt this request out of the check)`
        : `${what}, but the OpenAPI document has no ${verb.toUpperCase()} for ${matched.map((r) => r.template).join(", ")}`,
    );
  }
  const operation = doc.paths[found.template][verb];
  // A path parameter with an enum (POST /devices/{id}/{kind}) must take one of its values.
  const values = found.pattern.exec(route)!.slice(1);
  const names = [...found.template.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]!);
  const params = [...(doc.paths[found.template].parameters ?? []), ...(operation.parameters ?? [])];
  names.forEach((name, i) => {
    const allowed = params.find((p: Doc) => p.in === "path" && p.name === name)?.schema?.enum as string[] | undefined;
    if (allowed && !allowed.includes(decodeURIComponent(values[i]!))) throw new Error(`${what}, but ${found.template} takes ${name} only as ${allowed.join(", ")}`);
  });
  const response = operation.responses[String(status)];
  if (!response) {
    throw new Error(`${what}, a status the OpenAPI document does not list for ${verb.toUpperCase()} ${found.template} (it lists ${Object.keys(operation.responses).join(", ")}): ${text.slice(0, 300)}`);
  }
  if (!response.content) {
    if (text !== "") throw new Error(`${what} with a body, where the OpenAPI document says none: ${text.slice(0, 300)}`);
    return;
  }
  const documented = Object.keys(response.content);
  const type = contentType ?? "";
  const media = documented.find((d) => mediaType(d) === mediaType(type));
  if (!media) throw new Error(`${what} as ${type || "no content type"}, where the OpenAPI document says ${documented.join(" or ")}: ${text.slice(0, 300)}`);
  if (mediaType(media) !== "application/json") return;
  const pointer = `openapi.json#/paths/${escape(found.template)}/${verb}/responses/${status}/content/${escape(media)}/schema`;
  let validate = validators.get(pointer);
  if (!validate) {
    validate = ajv.compile({ $ref: pointer });
    validators.set(pointer, validate);
  }
  if (!validate(body)) {
    const errors = (validate.errors ?? []).slice(0, 5).map((e) => `${e.instancePath || "(body)"} ${e.message}${e.params ? ` ${JSON.stringify(e.params)}` : ""}`);
    throw new Error(`${what}, a body that does not match the OpenAPI document's schema:\n  ${errors.join("\n  ")}\nbody: ${text.slice(0, 500)}`);
  }
}
