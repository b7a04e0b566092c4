// llama.cpp's greedy continuation of a prompt, through the prebuilt llama.cpp
// of the npm package node-llama-cpp, as JSON {text, tokens}. Same as
// ../shared/tools/llamacpp-greedy.mjs, except that the KV cache is kept in
// f32 (llama.cpp's default is f16, which moves logits by ~1e-2 and flips
// greedy choices at near-ties; wmat computes in f32 throughout), and that the
// prompt is passed as token ids: LlamaCompletion tokenizes a text prompt
// without SentencePiece's leading-space prefix ("Once" becomes "O n ce"),
// which is not the prompt run.c or llama.cpp's own llama_tokenize produce.
// usage: NODE_PATH=<dir>/node_modules node llamacpp_greedy.mjs MODEL.gguf PROMPT [N_TOKENS]
import {createRequire} from "module";
const require = createRequire(import.meta.url);
let lib;
try { lib = await import("node-llama-cpp"); }
catch { lib = await import(require.resolve("node-llama-cpp", {paths: (process.env.NODE_PATH || "").split(":")})); }
const {getLlama, LlamaCompletion} = lib;
const [model_path, prompt = "Once upon a time", n = "64"] = process.argv.slice(2);
if (!model_path) { console.error("usage: llamacpp_greedy.mjs MODEL.gguf PROMPT [N_TOKENS]"); process.exit(2); }
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath: model_path});
const context = await model.createContext({
  contextSize: Math.min(model.trainContextSize || 2048, 2048), threads: 2,
  experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32"});
const completion = new LlamaCompletion({contextSequence: context.getSequence()});
const tokens = [];
const text = await completion.generateCompletion(model.tokenize(prompt), {
  maxTokens: Number(n), temperature: 0, repeatPenalty: false, onToken: (t) => tokens.push(...t)});
console.log(JSON.stringify({text, tokens}));
