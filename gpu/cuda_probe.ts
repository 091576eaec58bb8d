/**
 * Tries TensorFlow.js's CUDA backend (`tensorflow`, from `@tensorflow/tfjs-node-gpu`) and records exactly why it
 * starts or not, as one JSON document on stdout: the loader's own error, which of the files the package needs
 * are present (its native binding and libtensorflow, both fetched by its install script), and which CUDA
 * libraries the machine offers against those libtensorflow 2.9.1 was built for (CUDA 11.2, cuDNN 8.1).
 *
 *     deno run -A gpu/cuda_probe.ts
 *
 * Exit code 0 whether or not the backend starts: not starting is a finding, recorded in `started` and `verdict`.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { createRequire } from "node:module";
import { initBackend } from "../lib/mod.ts";

/** Libraries libtensorflow 2.9.1's GPU build links against, and the driver library every CUDA program needs. */
const NEEDED = ["libcuda.so.1", "libcudart.so.11.0", "libcublas.so.11", "libcublasLt.so.11", "libcudnn.so.8"];

const report: Record<string, unknown> = {};
const pkg = packageFacts();
report.package = pkg;
const ldconfig = await command("ldconfig", ["-p"]);
const libraries = Object.fromEntries(
  NEEDED.map((name) => [name, ldconfig.ok ? ldconfig.text.split("\n").some((l) => l.trim().startsWith(name)) : null]),
);
report.libraries = { needed: libraries, cudaRuntimesFound: cudaRuntimes(ldconfig.text) };
const smi = await command("nvidia-smi", ["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]);
const smiHeader = await command("nvidia-smi", []);
report.gpu = smi.ok
  ? { nvidiaSmi: smi.text.trim(), driverCuda: /CUDA Version:\s*([\d.]+)/.exec(smiHeader.text)?.[1] ?? null }
  : { nvidiaSmi: null, error: smi.text.trim() || "nvidia-smi is not on this machine" };

let started = false;
try {
  await initBackend("tensorflow");
  const product = tf.tidy(() => tf.matMul(tf.ones([256, 256]), tf.ones([256, 256])).sum());
  report.check = { backend: tf.getBackend(), sumOfAllOnesProduct: (await product.data())[0], expected: 256 ** 3 };
  product.dispose();
  started = true;
} catch (error) {
  report.error = error instanceof Error ? error.message : String(error);
}
report.started = started;
report.verdict = verdict();
console.log(JSON.stringify(report, null, 2));

function verdict(): string {
  if (started) return "the tensorflow (CUDA) backend started and computed a product";
  const reasons: string[] = [];
  if (!pkg.installed) reasons.push("@tensorflow/tfjs-node-gpu is not in node_modules");
  if (pkg.installed && !pkg.bindingPresent) {
    reasons.push(
      `its native binding (${pkg.bindingDir}/tfjs_binding.node) is missing: the package's install script ` +
        `downloads it, with libtensorflow ${pkg.libtensorflowVersion}, from ${pkg.downloadHost}, which neither the ` +
        "machine that built the bundle nor this one can reach",
    );
  }
  if (pkg.installed && !pkg.libtensorflowPresent) reasons.push("libtensorflow.so.2 is not in its deps/lib folder");
  const missing = NEEDED.filter((name) => libraries[name] === false);
  if (missing.length > 0) {
    reasons.push(
      `this machine's library path lacks ${missing.join(", ")} (libtensorflow 2.9.1's GPU build needs CUDA 11.2 ` +
        `and cuDNN 8.1; CUDA runtimes found here: ${cudaRuntimes(ldconfig.text).join(", ") || "none"})`,
    );
  }
  if (reasons.length === 0) reasons.push(`loading failed: ${report.error}`);
  return `does not start: ${reasons.join("; ")}`;
}

function packageFacts() {
  const facts = {
    installed: false,
    version: null as string | null,
    dir: null as string | null,
    bindingDir: "lib/napi-v8",
    bindingPresent: false,
    libtensorflowVersion: "2.9.1",
    libtensorflowPresent: false,
    downloadHost: "storage.googleapis.com",
  };
  try {
    const file = createRequire(import.meta.url).resolve("@tensorflow/tfjs-node-gpu/package.json");
    const dir = file.replace(/\/package\.json$/, "");
    const json = JSON.parse(Deno.readTextFileSync(file));
    // node-pre-gyp picks the newest of the package's N-API versions that the runtime supports.
    const runtimeNapi = Number((globalThis as { process?: { versions?: { napi?: string } } }).process?.versions?.napi);
    const versions: number[] = (json.binary?.napi_versions ?? [8]).filter((v: number) => !(v > runtimeNapi));
    const napi = String(Math.max(...versions));
    Object.assign(facts, {
      installed: true,
      version: json.version,
      dir,
      bindingDir: String(json.binary?.module_path ?? "./lib/napi-v{napi_build_version}")
        .replace("{napi_build_version}", napi).replace(/^\.\//, ""),
    });
    facts.bindingPresent = exists(`${dir}/${facts.bindingDir}/tfjs_binding.node`);
    facts.libtensorflowPresent = exists(`${dir}/deps/lib/libtensorflow.so.2`);
  } catch {
    // not installed: facts.installed stays false
  }
  return facts;
}

/** `libcudart.so.N` entries of the dynamic linker's cache: which CUDA runtimes a program could load. */
function cudaRuntimes(ldconfigText: string): string[] {
  return [...new Set(ldconfigText.match(/libcudart\.so\.[\d.]+/g) ?? [])].sort();
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

async function command(cmd: string, args: string[]): Promise<{ ok: boolean; text: string }> {
  try {
    const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
    const decode = (b: Uint8Array) => new TextDecoder().decode(b);
    return { ok: out.success, text: decode(out.stdout) + decode(out.stderr) };
  } catch (error) {
    return { ok: false, text: `${cmd}: ${error instanceof Error ? error.message : String(error)}` };
  }
}
