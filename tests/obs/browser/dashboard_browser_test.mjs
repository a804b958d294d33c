// The live dashboard in a real headless Chromium, against a real elastic
// run: `dtrain train JOB --workers 3 --elastic --min-workers 2 --dashboard 0`
// on a small synthetic job paced by the test hook DTRAIN_TEST_STEP_MS=40
// (every worker sleeps 40 ms after each step, so the job neither races
// through its steps nor burns the machine; it runs until this test stops it). The test
// opens the printed URL, waits for the loss chart to draw points, SIGKILLs
// worker slot 1 (its pid from processes.jsonl), waits until the page shows
// it killed and the group re-formed (the coordinator's generation 1, its
// second, with 2 members), waits for the charts to go on growing, saves a
// screenshot, and checks that bad requests from the browser side (no token,
// a wrong token, an unknown path, traversal attempts) get 4xx and no file.
// Every wait has a deadline and fails naming what it waited for.
//
// Usage: node dashboard_browser_test.mjs DTRAIN_BINARY ARTIFACT_DIR CHROMIUM
// Exit: 0 passed, 1 failed (run_browser_test.sh skips with 77).
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

const [dtrain, artifactDir, chromiumPath] = process.argv.slice(2);
const started = Date.now();
const log = (...a) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)} s]`, ...a);

const job = `
[job]
name = "dashboard-browser"
seed = 11

[data]
dataset = "synthetic"
synthetic_samples = 1500
synthetic_features = 16
synthetic_classes = 4

[model]
input_shape = [16]

[[model.layers]]
type = "linear"
name = "fc1"
out_features = 32

[[model.layers]]
type = "relu"

[[model.layers]]
type = "linear"
name = "fc2"
out_features = 4

[optimizer]
type = "sgd"
lr = 0.05

[train]
epochs = 100000
batch_size = 60
log_every_steps = 1
`;

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dtrain-dashboard-"));
const out = path.join(tmp, "out");
fs.writeFileSync(path.join(tmp, "job.toml"), job);
fs.mkdirSync(artifactDir, { recursive: true });

let output = "";
const child = spawn(
  dtrain,
  ["train", path.join(tmp, "job.toml"), "--output", out, "--workers", "3", "--elastic",
   "--min-workers", "2", "--no-resume", "--progress", "plain", "--dashboard", "0"],
  { env: { ...process.env, OPENBLAS_NUM_THREADS: "1", DTRAIN_TEST_STEP_MS: "40" }, stdio: ["ignore", "pipe", "pipe"] });
let exited = null;
const exitPromise = new Promise(resolve => child.on("exit", (code, signal) => {
  exited = { code, signal };
  resolve(exited);
}));
child.stdout.on("data", d => { output += d; });
child.stderr.on("data", d => { output += d; });

function fail(message) {
  const tail = output.split("\n").slice(-25).join("\n");
  throw new Error(`${message}\n--- dtrain output (last lines) ---\n${tail}`);
}

// Polls `probe` (async, returns a value or null) every 100 ms until it gives
// a value or `seconds` pass; then fails saying what it waited for.
async function waitFor(what, seconds, probe) {
  const deadline = Date.now() + seconds * 1000;
  let last = null;
  for (;;) {
    if (exited) fail(`dtrain exited (${JSON.stringify(exited)}) while waiting for ${what}`);
    const value = await probe();
    if (value !== null && value !== undefined && value !== false) return value;
    last = value;
    if (Date.now() > deadline) fail(`waited ${seconds} s for ${what}; last seen: ${JSON.stringify(last)}`);
    await new Promise(r => setTimeout(r, 100));
  }
}

function readProcesses() {
  try {
    return fs.readFileSync(path.join(out, "processes.jsonl"), "utf8").split("\n")
      .filter(l => l.trim()).map(l => JSON.parse(l));
  } catch {
    return [];
  }
}

let browser = null;
let status = 1;
try {
  const url = await waitFor("the dashboard URL line on dtrain's output", 30, async () => {
    const m = output.match(/dashboard: (http:\/\/127\.0\.0\.1:\d+\/\?token=[0-9a-f]{32})/);
    return m ? m[1] : null;
  });
  log("dashboard at", url);
  const origin = new URL(url).origin;
  const token = new URL(url).searchParams.get("token");

  browser = await chromium.launch({ executablePath: chromiumPath, headless: true,
                                    args: ["--no-sandbox", "--disable-gpu"] });
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const pageErrors = [];
  page.on("pageerror", e => pageErrors.push(String(e)));
  await page.goto(url, { timeout: 20000 });

  const points = sel => page.$eval(sel, e => Number(e.dataset.points));
  const kPoints = 15;
  await waitFor(`the loss chart to draw at least ${kPoints} points`, 40,
                async () => (await points("#chart-loss")) >= kPoints);
  await waitFor("the throughput chart to draw points for 3 ranks", 20, async () =>
    (await page.$$eval("#legend-throughput span", s => s.length)) === 3 &&
    (await points("#chart-throughput")) >= 6);
  await waitFor("3 workers shown alive", 20, async () => {
    const states = await page.$$eval("#workers tbody tr", rows => rows.map(r => r.dataset.state));
    return states.length === 3 && states.every(s => s === "alive") ? states : null;
  });
  log("loss points:", await points("#chart-loss"), "workers alive: 3");

  const start = readProcesses().find(e => e.event === "start" && e.slot === 1);
  if (!start) fail("processes.jsonl has no start event for slot 1");
  log("SIGKILL worker slot 1, pid", start.pid);
  process.kill(start.pid, "SIGKILL");

  await waitFor(`worker slot 1 (pid ${start.pid}) shown killed`, 30, async () =>
    (await page.$eval('#workers tr[data-slot="1"]', r => r.dataset.state)) === "killed");
  log("slot 1 shown killed");
  const group = await waitFor("the group shown re-formed (generation 1, 2 members)", 40, async () => {
    const g = await page.$eval("#group", e => ({ generation: e.dataset.generation,
                                                 members: e.dataset.members, text: e.textContent }));
    return g.generation === "1" && g.members === "2" ? g : null;
  });
  log("group:", group.text);
  const survivors = await page.$$eval("#workers tbody tr", rows =>
    rows.map(r => `${r.dataset.slot}:${r.dataset.state}`));
  if (survivors.join(" ") !== "0:re-formed 1:killed 2:re-formed") {
    fail(`worker states after the re-form: ${survivors.join(" ")}`);
  }
  const lastStep = () => page.$eval("#chart-loss", e => Number(e.dataset.lastStep));
  const before = await lastStep();
  await waitFor(`the loss chart to draw steps past ${before + 10} after the re-form`, 40,
                async () => (await lastStep()) >= before + 10);
  await waitFor("a checkpoint in the list", 30,
                async () => (await page.$$("#checkpoints li")).length > 0);
  await waitFor("the job file shown", 10,
                async () => (await page.textContent("#job")).includes("dashboard-browser"));

  const shot = path.join(artifactDir, "dashboard.png");
  await page.screenshot({ path: shot, fullPage: true });
  log("screenshot:", shot);

  // Bad requests, sent by the browser itself.
  const probes = await page.evaluate(async ({ token }) => {
    const results = [];
    const get = async (label, target, headers) => {
      const r = await fetch(target, { headers: headers || {}, cache: "no-store" });
      const text = await r.text();
      results.push({ label, target, status: r.status, leaked: text.includes("root:") });
    };
    await get("no token", "/api/metrics");
    await get("no token, page", "/");
    await get("wrong token", "/api/metrics", { "X-Dtrain-Token": "0".repeat(32) });
    await get("wrong token in query", "/api/processes?token=" + "f".repeat(32));
    await get("unknown path", "/api/nothing", { "X-Dtrain-Token": token });
    await get("traversal", "/api/../../etc/passwd", { "X-Dtrain-Token": token });
    await get("encoded traversal", "/api/%2e%2e/%2e%2e/etc/passwd", { "X-Dtrain-Token": token });
    await get("encoded slashes", "/api/..%2f..%2f..%2fetc%2fpasswd", { "X-Dtrain-Token": token });
    await get("absolute file URL path", "/" + "etc/passwd", { "X-Dtrain-Token": token });
    await get("good", "/api/metrics?since=0", { "X-Dtrain-Token": token });
    return results;
  }, { token });
  for (const p of probes) log(`  ${p.label}: ${p.target} -> ${p.status}`);
  for (const p of probes) {
    if (p.leaked) fail(`${p.label} (${p.target}) returned file contents`);
    if (p.label === "good" ? p.status !== 200 : p.status < 400 || p.status >= 500) {
      fail(`${p.label} (${p.target}) answered ${p.status}`);
    }
  }
  // The same through Node's HTTP client, which sends the target unchanged
  // (the browser normalises "..").
  const api = (await import("node:http")).default;
  const raw = target => new Promise((resolve, reject) => {
    const req = api.get(origin + target, { headers: { "X-Dtrain-Token": token } }, res => {
      let body = "";
      res.on("data", d => { body += d; });
      res.on("end", () => resolve({ status: res.statusCode, body }));
    });
    req.setTimeout(10000, () => req.destroy(new Error(`no answer to ${target} within 10 s`)));
    req.on("error", reject);
  });
  for (const target of ["/api/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "//etc/passwd",
                        "/api/metrics/..%2f..%2f..%2fetc%2fpasswd"]) {
    const r = await raw(target);
    log(`  raw ${target} -> ${r.status}`);
    if (r.status < 400 || r.status >= 500 || r.body.includes("root:")) {
      fail(`raw request ${target} answered ${r.status}`);
    }
  }
  if (pageErrors.length > 0) fail(`the page threw: ${pageErrors.join("; ")}`);
  status = 0;
  log("PASS");
} catch (e) {
  console.error("FAIL:", e.message);
} finally {
  if (browser) await browser.close().catch(() => {});
  if (!exited) {
    child.kill("SIGTERM");
    const stopped = await Promise.race([exitPromise,
                                        new Promise(r => setTimeout(() => r(null), 20000))]);
    if (!stopped) {
      console.error("FAIL: dtrain did not exit within 20 s of SIGTERM; killing it");
      child.kill("SIGKILL");
      await exitPromise;
      status = 1;
    } else {
      log("dtrain stopped:", JSON.stringify(stopped));
    }
  }
  fs.rmSync(tmp, { recursive: true, force: true });
}
// A sanitizer build (build-asan) reports through the processes' stderr.
const report = output.match(/(ERROR: \w+Sanitizer.*|runtime error:.*)/);
if (report) {
  console.error("FAIL: a sanitizer report in dtrain's output:", report[0]);
  status = 1;
}
process.exit(status);
