// The client's wire types (src/types.ts) against the JSON Schemas generated from the protocol
// crate (docs/schemas, see docs/architecture.md): the TypeScript compiler reads types.ts, and
// every event type, payload field (its name, whether it is required, its type), client message,
// server message and error code must be the same on both sides. The second test proves the
// comparison fails when types.ts drifts, on copies of types.ts with one change each.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const here = path.dirname(fileURLToPath(import.meta.url));
const typesFile = path.resolve(here, "../src/types.ts");
const schemaDir = path.resolve(here, "../../../docs/schemas");

const readSchema = (key) => JSON.parse(fs.readFileSync(path.join(schemaDir, `${key}.json`), "utf8"));
const index = JSON.parse(fs.readFileSync(path.join(schemaDir, "index.json"), "utf8"));
const keysOf = (group) => index.groups[group].map((e) => e.file.replace(/\.json$/, ""));

/** The TypeScript types a schema property may be written as in types.ts. */
function expectedTs(prop) {
  const variants = prop.anyOf ? prop.anyOf.filter((v) => v.type !== "null") : [prop];
  if (variants.length !== 1) return null;
  const p = variants[0];
  if (p.$ref) {
    const name = path.basename(p.$ref, ".json");
    return (
      {
        Timestamp: ["string"],
        ChannelId: ["string"],
        Id: ["string"],
        Ref: ["Ref", "string | number"],
        Since: ["Position"],
        // types.ts keeps `code` open (`ErrorCode | string`) for codes of newer servers; the
        // ErrorCode union itself is compared on its own below.
        ErrorCode: ["string"],
      }[name] ?? null
    );
  }
  if (p.const !== undefined) return [JSON.stringify(p.const)];
  if (p.enum) return [p.enum.map((v) => JSON.stringify(v)).join(" | ")];
  if (p.not && p.not.type === "null") return ["unknown"];
  const t = Array.isArray(p.type) ? p.type.filter((x) => x !== "null") : [p.type];
  if (t.length !== 1) return null;
  return (
    {
      string: ["string"],
      number: ["number"],
      integer: ["number"],
      boolean: ["boolean"],
      object: ["Record<string, unknown>"],
      array: ["unknown[]"],
    }[t[0]] ?? null
  );
}

/** The differences between the types of `file` and the schemas: an empty list when they agree. */
let previous; // the last program: its library files are reused by the next one

export function compare(file) {
  const options = { strict: true, exactOptionalPropertyTypes: true, noEmit: true, types: [], lib: ["lib.es2020.d.ts", "lib.dom.d.ts"] };
  const program = ts.createProgram([file], options, undefined, previous);
  previous = program;
  const checker = program.getTypeChecker();
  const source = program.getSourceFile(file);
  const diffs = [];
  const syntax = ts.getPreEmitDiagnostics(program, source);
  for (const d of syntax) diffs.push(`types.ts does not compile: ${ts.flattenDiagnosticMessageText(d.messageText, "\n")}`);

  const declared = new Map();
  ts.forEachChild(source, (node) => {
    if ((ts.isInterfaceDeclaration(node) || ts.isTypeAliasDeclaration(node)) && node.name) declared.set(node.name.text, node);
    if (ts.isVariableStatement(node)) {
      for (const d of node.declarationList.declarations) declared.set(d.name.getText(source), d);
    }
  });
  const typeOf = (name) => {
    const node = declared.get(name);
    if (!node) {
      diffs.push(`types.ts has no ${name}`);
      return null;
    }
    return checker.getTypeAtLocation(node.name);
  };
  const text = (t) => checker.typeToString(t, undefined, ts.TypeFormatFlags.NoTruncation);

  /** Named properties of `type`: name -> { optional, type }. */
  const props = (type) => {
    const out = new Map();
    for (const p of checker.getPropertiesOfType(type)) {
      const decl = p.valueDeclaration ?? p.declarations?.[0];
      const t = checker.getTypeOfSymbolAtLocation(p, decl ?? source);
      out.set(p.name, {
        optional: (p.flags & ts.SymbolFlags.Optional) !== 0,
        type: text(t).replace(/ \| undefined$/, ""),
      });
    }
    return out;
  };

  /** Compares an object type of types.ts with an object schema (delivered form). */
  const compareObject = (where, type, schema, alsoRequired = []) => {
    const have = props(type);
    const required = new Set([...(schema.required ?? []), ...alsoRequired]);
    const properties = schema.properties ?? {};
    for (const [name, prop] of Object.entries(properties)) {
      const h = have.get(name);
      if (!h) {
        diffs.push(`${where}: field ${name} is in the schema, not in types.ts`);
        continue;
      }
      if (h.optional === required.has(name)) {
        diffs.push(`${where}: field ${name} is ${required.has(name) ? "required" : "optional"} in the schema, ${h.optional ? "optional" : "required"} in types.ts`);
      }
      const want = expectedTs(prop);
      if (!want) diffs.push(`${where}: field ${name}: no TypeScript mapping for its schema ${JSON.stringify(prop)}`);
      else if (!want.includes(h.type)) diffs.push(`${where}: field ${name} is ${want.join(" or ")} in the schema, ${h.type} in types.ts`);
    }
    for (const name of have.keys()) {
      if (!(name in properties)) diffs.push(`${where}: field ${name} is in types.ts, not in the schema`);
    }
  };

  // Event types: the schemas, the EventPayloads map, and the EVENT_TYPES list.
  const schemaTypes = keysOf("payload").map((k) => k.replace(/^payload\//, ""));
  const payloads = typeOf("EventPayloads");
  if (payloads) {
    const mapped = [...props(payloads).keys()];
    for (const t of schemaTypes) if (!mapped.includes(t)) diffs.push(`event type ${t} is in the schemas, not in EventPayloads`);
    for (const t of mapped) if (!schemaTypes.includes(t)) diffs.push(`event type ${t} is in EventPayloads, not in the schemas`);
    for (const t of schemaTypes.filter((x) => mapped.includes(x))) {
      const payloadType = checker.getTypeOfSymbolAtLocation(payloads.getProperty(t), declared.get("EventPayloads"));
      // types.ts describes payloads as delivered, when `timestamp` is always there.
      compareObject(`payload of ${t}`, payloadType, readSchema(`payload/${t}`), ["timestamp"]);
    }
  }
  const list = declared.get("EVENT_TYPES");
  if (list) {
    const listed = [];
    const walk = (n) => {
      if (ts.isStringLiteral(n)) listed.push(n.text);
      ts.forEachChild(n, walk);
    };
    walk(list.initializer);
    if (JSON.stringify(listed) !== JSON.stringify(schemaTypes)) {
      diffs.push(`EVENT_TYPES is [${listed}], the schemas have [${schemaTypes}] (in catalogue order)`);
    }
  } else diffs.push("types.ts has no EVENT_TYPES");

  // The delivered event's envelope.
  const delivery = typeOf("CortexEvent");
  if (delivery && delivery.isUnion()) {
    const first = delivery.types.find((u) => text(checker.getTypeOfSymbol(u.getProperty("type"))) === JSON.stringify(schemaTypes[0]));
    if (!first) diffs.push(`CortexEvent has no ${schemaTypes[0]}`);
    else {
      const schema = readSchema(`event/${schemaTypes[0]}`);
      const envelope = { ...schema, properties: { ...schema.properties } };
      delete envelope.properties.payload;
      delete envelope.properties.type;
      const have = new Map([...props(first)].filter(([k]) => k !== "payload" && k !== "type"));
      for (const [name, prop] of Object.entries(envelope.properties)) {
        const h = have.get(name);
        if (!h) diffs.push(`event: field ${name} is in the schema, not in Delivery`);
        else if (!expectedTs(prop).includes(h.type) || h.optional) diffs.push(`event: field ${name} differs (${h.type}${h.optional ? ", optional" : ""})`);
      }
      for (const name of have.keys()) if (!(name in envelope.properties)) diffs.push(`event: field ${name} is in Delivery, not in the schema`);
    }
  }

  // Client and server messages: one union member per schema file, keyed by `type`.
  const compareUnion = (unionName, group) => {
    const union = typeOf(unionName);
    if (!union) return;
    const members = new Map();
    for (const m of union.isUnion() ? union.types : [union]) {
      const tag = m.getProperty("type");
      if (tag) members.set(JSON.parse(text(checker.getTypeOfSymbol(tag))), m);
    }
    const keys = keysOf(group).map((k) => k.replace(`${group}/`, ""));
    for (const k of keys) {
      if (!members.has(k)) diffs.push(`${group} message ${k} is in the schemas, not in ${unionName}`);
      else compareObject(`${group} message ${k}`, members.get(k), readSchema(`${group}/${k}`));
    }
    for (const k of members.keys()) if (!keys.includes(k)) diffs.push(`${group} message ${k} is in ${unionName}, not in the schemas`);
  };
  compareUnion("ClientMessage", "client");
  compareUnion("ControlMessage", "server");

  // Error codes.
  const codes = typeOf("ErrorCode");
  if (codes) {
    const have = (codes.isUnion() ? codes.types : [codes]).map((t) => JSON.parse(text(t))).sort();
    const want = readSchema("common/ErrorCode").oneOf.map((v) => v.const).sort();
    if (JSON.stringify(have) !== JSON.stringify(want)) diffs.push(`ErrorCode is [${have}], the schema has [${want}]`);
  }
  return diffs;
}

test("types.ts matches the schemas generated from the protocol crate", () => {
  assert.deepEqual(compare(typesFile), []);
});

test("the comparison fails when types.ts drifts", () => {
  const original = fs.readFileSync(typesFile, "utf8");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cortex-types-"));
  const drifts = [
    ["a required payload field removed", "  gate: string;\n  reason: string;", "  gate: string;"],
    ["a payload field of the wrong type", "  duration: number;", "  duration: string;"],
    ["a required field made optional", "  title: string;\n  projectId: string;", "  title: string;\n  projectId?: string;"],
    ["a payload field the schemas lack", "  content: string;\n}", "  content: string;\n  mood: string;\n}"],
    ["an event type removed", '  "chat.message": ChatMessagePayload;\n', ""],
    ["an event type the schemas lack", '  "chat.message": ChatMessagePayload;\n', '  "chat.message": ChatMessagePayload;\n  "chat.deleted": ChatMessagePayload;\n'],
    ["an event type missing from EVENT_TYPES", '  "gate.failed",\n  "chat.message",\n] as const', '  "chat.message",\n] as const'],
    ["an agent status added", 'status: "error" | "blocked";', 'status: "error" | "blocked" | "idle";'],
    ["a client message removed", '  | { type: "ping"; ref?: Ref };', ";"],
    ["a client field made required", '{ type: "unsubscribe"; channelId: string; ref?: Ref }', '{ type: "unsubscribe"; channelId: string; ref: Ref }'],
    ["a server message field removed", "  userId: string;\n", ""],
    ["an error code removed", '  | "token_mismatch"\n', ""],
    ["the offset of an event made a string", "  offset: number;\n  epoch: string;\n  payload: P;", "  offset: string;\n  epoch: string;\n  payload: P;"],
  ];
  try {
    for (const [what, from, to] of drifts) {
      assert.ok(original.includes(from), `the drift "${what}" no longer applies to types.ts; update this test`);
      const file = path.join(dir, "types.ts");
      fs.writeFileSync(file, original.replace(from, to));
      const diffs = compare(file);
      // Found by the comparison itself, not only by the compiler.
      assert.ok(diffs.some((d) => !d.startsWith("types.ts does not compile")), `${what}: the comparison found nothing (${diffs})`);
      if (process.env.SCHEMAS_TEST_VERBOSE) console.log(what, diffs);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
