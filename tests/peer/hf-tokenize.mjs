// Hugging Face's tokenizers library as a peer of wmat's tokenizer: load a
// tokenizer.json (or the one in a model directory) and print the ids of each
// line of a text file, one output line per input line, ids separated by
// spaces, special tokens (BOS) included as the file's post-processor adds
// them. Lines are split at "\n" only; a final newline ends the last line.
// usage: NODE_PATH=<dir>/node_modules node hf-tokenize.mjs DIR|tokenizer.json TEXT
// (the npm package `tokenizers` 0.23.x with its prebuilt binary; .ci/run
// installs it into ~/.cache/wmat-npm-tokenizers)
import {createRequire} from "module";
import {readFileSync, statSync} from "fs";
const require = createRequire(import.meta.url);
let lib;
try { lib = require("tokenizers"); }
catch { lib = require(require.resolve("tokenizers", {paths: (process.env.NODE_PATH || "").split(":")})); }
const [where, textPath] = process.argv.slice(2);
if (!where || !textPath) { console.error("usage: hf-tokenize.mjs DIR|tokenizer.json TEXT"); process.exit(2); }
const file = statSync(where).isDirectory() ? `${where}/tokenizer.json` : where;
const tok = lib.Tokenizer.fromFile(file);
let text = readFileSync(textPath, "utf8");
if (text.endsWith("\n")) text = text.slice(0, -1);
const lines = text.split("\n");
const out = [];
for (let i = 0; i < lines.length; i += 256) {
  const encs = await tok.encodeBatch(lines.slice(i, i + 256), {addSpecialTokens: true});
  for (const e of encs) out.push(e.getIds().join(" "));
}
process.stdout.write(out.join("\n") + "\n");
