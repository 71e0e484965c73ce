// Validate glTF/GLB files with the Khronos glTF Validator (npm package gltf-validator, installed by
// scripts/install.sh into .tools/). Usage: node scripts/gltf_validate.js FILE...
// Prints one JSON report per line ({"file", "errors", "warnings", "infos", "hints", "messages": [...]});
// exits 1 when any file has an error.
const fs = require('fs');
const path = require('path');
const validator = require(path.join(__dirname, '..', '.tools', 'node_modules', 'gltf-validator'));

async function main(files) {
  let failed = false;
  for (const f of files) {
    const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(f)), {
      uri: path.basename(f), maxIssues: 200,
    });
    const n = report.issues;
    failed = failed || n.numErrors > 0;
    console.log(JSON.stringify({
      file: f, validatorVersion: report.validatorVersion, errors: n.numErrors, warnings: n.numWarnings,
      infos: n.numInfos, hints: n.numHints, messages: n.messages, info: report.info,
    }));
  }
  process.exit(failed ? 1 : 0);
}

main(process.argv.slice(2)).catch((e) => { console.error(String(e)); process.exit(2); });
