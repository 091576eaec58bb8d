/**
 * Reads what `gpu/run.sh` left in its log folder and says what it found: one line per step as the run goes
 * (`--step NAME`), and at the end `summary.json` and `summary.md` (printed too).
 *
 *     deno run --allow-read --allow-write gpu/summary.ts --step adapter LOGS
 *     deno run --allow-read gpu/summary.ts --check tests LOGS   # exit 0: only known webgpu failures
 *     deno run --allow-read --allow-write gpu/summary.ts LOGS OUT
 *
 * @module
 */

interface StepRecord {
  step: string;
  status: "ok" | "failed" | "timeout" | "skipped";
  seconds: number;
  limit: number;
  rc: number;
  note: string;
}

/** One step's findings: a line for the console and the figures for summary.json. */
interface Finding {
  line: string;
  data: Record<string, unknown>;
}

const readText = (path: string): string | null => {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return null;
  }
};
const readJson = (path: string): Record<string, unknown> | unknown[] | null => {
  const text = readText(path);
  if (text === null) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
};
const fixed = (n: unknown, digits = 1) => typeof n === "number" ? n.toFixed(digits) : "?";

function adapterFinding(logs: string): Finding {
  const r = readJson(`${logs}/adapter.json`) as Record<string, Record<string, unknown> | null> | null;
  if (r === null) return { line: "adapter: no report (see adapter.log)", data: {} };
  const a = r.adapter;
  if (a === null || a === undefined) return { line: `adapter: NONE: ${r.error}`, data: { adapter: null, ...r } };
  const t = (r.tfjs ?? {}) as Record<string, unknown> & { matmul?: Record<string, number> };
  const what = `${a.vendorName} (vendor ${a.vendor}) "${a.description}"${a.software ? " — SOFTWARE RENDERER" : ""}`;
  const tfjs = t.error
    ? `tfjs webgpu failed: ${t.error}`
    : `tfjs webgpu: matMul error ${Number(t.maxAbsDiff).toExponential(1)}, ${t.matmul?.size}³ float32 at ` +
      `${fixed(t.matmul?.gflops)} GFLOP/s`;
  return { line: `adapter: ${what}; ${tfjs}`, data: r };
}

function cudaFinding(logs: string): Finding {
  const r = readJson(`${logs}/cuda.json`) as Record<string, unknown> | null;
  if (r === null) return { line: "CUDA backend: no report (see cuda.log)", data: {} };
  return { line: `CUDA backend (tensorflow): ${r.verdict}`, data: r };
}

function testsFinding(logs: string): Finding {
  const xml = readText(`${logs}/tests.xml`) ?? "";
  const log = readText(`${logs}/tests.log`) ?? "";
  const cases = [...xml.matchAll(/<testcase\b[^>]*?name="([^"]*)"[^>]*?(\/>|>([\s\S]*?)<\/testcase>)/g)];
  const failures = cases.filter((c) => /<failure\b/.test(c[3] ?? "")).map((c) => ({
    name: unescapeXml(c[1]),
    syncRead: /clearRect/.test(c[3] ?? ""),
    message: unescapeXml(/<failure\b[^>]*message="([^"]*)"/.exec(c[3] ?? "")?.[1] ?? "").slice(0, 300),
  }));
  const syncReads = failures.filter((f) => f.syncRead).length;
  const others = failures.filter((f) => !f.syncRead);
  const gap = /webgpu vs cpu: largest difference (\S+)/.exec(log)?.[1] ?? null;
  const data = {
    passed: cases.length - failures.length,
    failed: failures.length,
    failedBySyncRead: syncReads,
    otherFailures: others,
    webgpuVsCpuLargestDifference: gap === null ? null : Number(gap),
  };
  if (cases.length === 0) return { line: "tests: no results (see tests.log)", data };
  return {
    line: `tests on webgpu: ${data.passed} passed, ${failures.length} failed (${syncReads} of them read a tensor ` +
      `synchronously, which tfjs-backend-webgpu cannot do in Deno; ${others.length} other)` +
      `${gap === null ? "" : `; webgpu vs cpu largest difference ${gap}`}` +
      (others.length > 0 ? `; other failures: ${others.map((f) => f.name).join("; ")}` : ""),
    data,
  };
}

function benchFinding(logs: string): Finding {
  const raw = readJson(`${logs}/bench.json`);
  const r = (Array.isArray(raw) ? raw[0] : raw) as Record<string, Record<string, unknown>> | null;
  if (r === null) return { line: "bench: no report (see bench.log)", data: {} };
  const s = r.trainStepsPerSecond as { full: number; lora: Record<string, number> };
  const a = r.accuracy as Record<string, number>;
  const i = r.inferenceMs as Record<string, Record<string, number>>;
  return {
    line: `bench (${r.backend}): training ${fixed(s.full)} steps/s full, ${fixed(s.lora["4"])} LoRA r=4 ` +
      `(step time ratio ${fixed(r.loraRank4StepTimeRatio, 2)}); inference batch 64 ${fixed(i.base["64"], 2)} ms; ` +
      `accuracy ${fixed(a.full, 2)}% full, ${fixed(a.lora4, 2)}% LoRA (${a.epochs} epoch, ${a.trainExamples} images)`,
    data: {
      backend: r.backend,
      trainStepsPerSecond: s,
      loraRank4StepTimeRatio: r.loraRank4StepTimeRatio,
      inferenceMs: i,
      mergedMaxAbsDiff: r.mergedMaxAbsDiff,
      accuracy: a,
      settings: r.settings,
    },
  };
}

async function sweepFinding(logs: string, table: boolean): Promise<Finding> {
  // One file per backend (run.sh measures each in its own step), each a report or an array of them.
  const reports = ["webgpu", "wasm"].flatMap((b) => readJson(`${logs}/sweep-${b}.json`) ?? [])
    .flat() as import("../bench/sweep.ts").BatchSweepReport[];
  if (reports.length === 0) return { line: "batch sweep: no report (see sweep-*.log)", data: {} };
  const rows = reports.map((r) =>
    `${r.backend} ` + r.points.map((p) => `${p.batch}: ${fixed(p.full.median)}/${fixed(p.lora4.median)}`).join(", ")
  );
  const line = `batch sweep (steps/s full/LoRA r=4 by batch): ${rows.join(" | ")}`;
  if (!table) return { line, data: { reports } };
  const { formatBatchSweep } = await import("../bench/sweep.ts");
  return { line: `${line}\n\n${formatBatchSweep(reports)}`, data: { reports } };
}

function demoFinding(logs: string): Finding {
  const log = readText(`${logs}/demo.log`) ?? "";
  const base = /base test accuracy ([\d.]+)%/.exec(log)?.[1];
  const lora = /LoRA test accuracy ([\d.]+)%/.exec(log)?.[1];
  const gap = /max \|difference\| (\S+)/.exec(log)?.[1];
  const rows = [...log.matchAll(/^\| (base MLP|\+ LoRA[^|]*) \| (\d+) \|[^|]*\| ([\d.]+)% \| ([\d.]+) \| (\d+) \|$/gm)]
    .map((m) => ({ model: m[1].trim(), epochs: Number(m[2]), secondsPerEpoch: Number(m[4]), stepsPerSecond: +m[5] }));
  const header = /^backend (\S+) \| MNIST (\d+) train \/ (\d+) test/m.exec(log);
  const data = {
    backend: header?.[1] ?? null,
    trainImages: header ? Number(header[2]) : null,
    testImages: header ? Number(header[3]) : null,
    baseAccuracy: base === undefined ? null : Number(base),
    loraAccuracy: lora === undefined ? null : Number(lora),
    mergedVsUnmergedMaxDifference: gap === undefined ? null : Number(gap),
    rows,
  };
  if (base === undefined) return { line: "demo: no accuracy printed (see demo.log)", data };
  return {
    line: `demo (${data.backend}, ${data.trainImages} train / ${data.testImages} test): base ${base}%, LoRA ${lora}%` +
      `, merged vs unmerged ${gap}; ` + rows.map((r) => `${r.model} ${r.stepsPerSecond} steps/s`).join(", "),
    data,
  };
}

function gptFinding(logs: string): Finding {
  const raw = readJson(`${logs}/gpt.json`);
  if (raw === null) return { line: "GPT bench: no report", data: {} };
  const r = (Array.isArray(raw) ? raw[0] : raw) as Record<string, unknown>;
  const t = r.trainTokensPerSecond as Record<string, { median?: number }> | undefined;
  const line = t?.full?.median !== undefined
    ? `GPT bench (${r.backend}): training ${fixed(t.full.median, 0)} tokens/s full, ${fixed(t.lora?.median, 0)} ` +
      `LoRA${typeof r.loraStepTimeRatio === "number" ? ` (step time ratio ${fixed(r.loraStepTimeRatio, 2)})` : ""}`
    : `GPT bench: ${JSON.stringify(raw).slice(0, 300)}`;
  return { line, data: { report: raw } };
}

const FINDINGS: Record<string, (logs: string, table: boolean) => Finding | Promise<Finding>> = {
  adapter: adapterFinding,
  cuda: cudaFinding,
  tests: testsFinding,
  bench: benchFinding,
  sweep: sweepFinding,
  demo: demoFinding,
  gpt: gptFinding,
};

function unescapeXml(text: string): string {
  return text.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&quot;/g, '"').replace(/&apos;/g, "'")
    .replace(/&#(\d+);/g, (_, n) => String.fromCharCode(Number(n))).replace(/&amp;/g, "&");
}

async function main(): Promise<void> {
  const args = [...Deno.args];
  if (args[0] === "--step") {
    const [, name, logs] = args;
    const finding = FINDINGS[name];
    if (finding) console.log((await finding(logs, false)).line);
    return;
  }
  if (args[0] === "--check" && args[1] === "tests") {
    // Passes when the tests ran and every failure is a synchronous read (see testsFinding).
    const f = testsFinding(args[2]);
    console.log(f.line);
    const ran = Number(f.data.passed) + Number(f.data.failed) > 0;
    Deno.exit(ran && (f.data.otherFailures as unknown[]).length === 0 ? 0 : 1);
  }
  const [logs, out] = args;
  if (!logs || !out) {
    console.error("summary.ts: expected LOGS OUT (folders), or --step NAME LOGS.");
    Deno.exit(2);
  }
  const steps = (readText(`${logs}/steps.jsonl`) ?? "").split("\n").filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l) as StepRecord);
  const run = readJson(`${logs}/run.json`) as Record<string, unknown> | null;
  const summary: Record<string, unknown> = { ...run, steps };
  const lines = [
    `# GPU run (${run?.mode ?? "?"} mode), ${run?.started ?? ""}`,
    "",
    ...(typeof run?.machine === "string" ? [`Machine: ${run.machine}`, ""] : []),
  ];
  const adapter = adapterFinding(logs);
  const a = (adapter.data.adapter ?? null) as Record<string, unknown> | null;
  if (a === null || a.software || !a.nvidia) {
    const what = a === null ? (adapter.data.adapter === null ? "no adapter" : "no adapter report") : a.description;
    lines.push(
      `**WARNING: WebGPU did not run on an NVIDIA GPU** (${what}): ` +
        "the figures below are not GPU figures.",
      "",
    );
  }
  for (const [name, finding] of Object.entries(FINDINGS)) {
    const f = await finding(logs, true);
    summary[name] = f.data;
    const records = steps.filter((s) => s.step === name || s.step.startsWith(`${name}-`));
    const status = records.length === 0
      ? "[not run]"
      : `[${records.map((r) => `${r.status}, ${r.seconds.toFixed(0)} s`).join("; ")}]`;
    lines.push(`- ${status} ${f.line}`);
  }
  lines.push("", "| step | status | seconds | limit | note |", "|---|---|--:|--:|---|");
  for (const s of steps) lines.push(`| ${s.step} | ${s.status} | ${s.seconds.toFixed(1)} | ${s.limit} | ${s.note} |`);
  const markdown = lines.join("\n") + "\n";
  await Deno.writeTextFile(`${out}/summary.json`, JSON.stringify(summary, null, 2) + "\n");
  const sweep = (summary.sweep as { reports?: unknown[] }).reports;
  if (sweep) await Deno.writeTextFile(`${out}/sweep.json`, JSON.stringify(sweep, null, 2) + "\n");
  await Deno.writeTextFile(`${out}/summary.md`, markdown);
  console.log(markdown);
}

if (import.meta.main) await main();
