//! Remote launch (issue 15): what `metac run --on b` costs against running here, in one run between two netns
//! hosts whose nodes share the machine's mounts (as tests/tests/remote.rs starts them). Host 2 (B) exports compute to
//! host 1 (A), which saves the ref as `b`.
//!
//! - `true`: the whole-process time of `metac run --rm --on b true` from A, of `metac run --rm true` on A and of
//!   `runc run` of a busybox rootfs (run.rs's bundle), interleaved rep by rep so that they share the machine's noise;
//! - a compile: a generated C project of `--files` sources and a Makefile in a directory of A's, built with
//!   `make -j2` on A and with `metac run --on b make -j2` (cc and the headers come from A's root, bound read-only on
//!   B; the project directory read-write): the first remote build is the cold one, the next `--reps` the warm ones,
//!   interleaved with local builds; `make clean` runs on A between builds, so every build starts from the same tree.
//!   With the fs content cache (`metac fs stats`), also what A served per remote build, cold and warm.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use metac_tests::{output, wait_until, Host, Lab, Node};

use crate::run::{bundle, median};

/// Options of `metac-bench remote`.
#[derive(clap::Args)]
pub struct Args {
    /// Runs of each `true` (after one warm-up of each, not counted), and warm remote and local builds (the median is
    /// printed)
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// C sources in the generated project
    #[arg(long, default_value_t = 20)]
    files: usize,
}

/// Longest the timing script of one part may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Functions per generated source file (about 12 lines each).
const FUNCS_PER_FILE: usize = 24;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

fn metac(h: &Host, args: &[&str]) -> Result<String> {
    let o = h.metac(args).with_context(|| format!("metac {args:?} on host {}", h.index()))?;
    Ok(text(&o.stdout))
}

fn json(h: &Host, args: &[&str]) -> Result<serde_json::Value> {
    let a: Vec<&str> = std::iter::once("--json").chain(args.iter().copied()).collect();
    serde_json::from_str(&metac(h, &a)?).with_context(|| format!("metac {a:?} printed no JSON"))
}

/// Starts a container-running node named `lab-N` on each host and waits until each sees the other.
fn start(lab: &Lab) -> Result<Vec<Node>> {
    let mut nodes = vec![];
    for h in lab.hosts() {
        // The remote run binds the caller's directories; its user must be able to walk to them.
        for d in [h.dir().parent().context("a host directory has a parent")?, h.dir()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        }
        nodes.push(h.start_node_sharing_mounts_named(&format!("lab-{}", h.index()), &["--no-overlay"])?);
    }
    let peers = |h: &Host| json(h, &["status"]).ok().and_then(|s| s["peers"].as_u64()).unwrap_or(0);
    wait_until(Duration::from_secs(60), Duration::from_millis(200), || Ok(lab.hosts().iter().all(|h| peers(h) >= 1)))
        .context("the two nodes did not find each other")?;
    Ok(nodes)
}

/// Host `b` exports compute to host `a`'s node; `a` saves the ref as `b`.
fn grant(a: &Host, b: &Host) -> Result<()> {
    let key = json(a, &["status"])?["key"].as_str().context("status has no key")?.to_string();
    let r = metac(b, &["compute", "export", "--to", &key])?;
    if !r.starts_with("ref://") {
        bail!("compute export printed no ref: {r}");
    }
    metac(a, &["ref", "save", "b", &r])?;
    Ok(())
}

/// One generated source: `FUNCS_PER_FILE` functions of integer arithmetic and loops, different per file and
/// function so that the compiler has real work, and a `mod_N` that sums them.
fn source(n: usize) -> String {
    let mut s = String::from("#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n#include \"proj.h\"\n\n");
    for f in 0..FUNCS_PER_FILE {
        let (a, b) = (n * 31 + f * 7 + 3, n * 17 + f * 13 + 5);
        let _ = write!(
            s,
            "static unsigned long f{n}_{f}(unsigned long x) {{\n\
             \x20   unsigned long acc = {a}ul;\n\
             \x20   char buf[64];\n\
             \x20   for (unsigned long i = 0; i < (x % {b}ul) + 8; i++) {{\n\
             \x20       acc = acc * 6364136223846793005ul + i * {b}ul;\n\
             \x20       acc ^= acc >> {sh};\n\
             \x20       if ((acc & 7) == {m}) acc += (unsigned long)strlen(\"f{n}_{f}\");\n\
             \x20   }}\n\
             \x20   snprintf(buf, sizeof buf, \"%lu\", acc);\n\
             \x20   return acc + (unsigned long)atoi(buf + strlen(buf) - 2);\n\
             }}\n\n",
            sh = 7 + (n + f) % 23,
            m = (n + f) % 8,
        );
    }
    let _ = writeln!(s, "unsigned long mod_{n}(unsigned long x) {{\n    unsigned long r = 0;");
    for f in 0..FUNCS_PER_FILE {
        let _ = writeln!(s, "    r += f{n}_{f}(x + {f});");
    }
    s.push_str("    return r;\n}\n");
    s
}

/// Writes the project into `dir`: `proj.h`, `m0.c`.. and `main.c`, and a Makefile that builds `prog` with -O2.
/// The content depends on `files` alone.
fn project(dir: &Path, files: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut h = String::from("#ifndef PROJ_H\n#define PROJ_H\n");
    let mut main =
        String::from("#include <stdio.h>\n#include \"proj.h\"\n\nint main(void) {\n    unsigned long r = 0;\n");
    for n in 0..files {
        std::fs::write(dir.join(format!("m{n}.c")), source(n))?;
        let _ = writeln!(h, "unsigned long mod_{n}(unsigned long x);");
        let _ = writeln!(main, "    r ^= mod_{n}({n});");
    }
    h.push_str("#endif\n");
    main.push_str("    printf(\"%lu\\n\", r);\n    return 0;\n}\n");
    std::fs::write(dir.join("proj.h"), h)?;
    std::fs::write(dir.join("main.c"), main)?;
    let objs: Vec<String> = (0..files).map(|n| format!("m{n}.o")).chain(["main.o".into()]).collect();
    let make = format!(
        "CC = cc\nCFLAGS = -O2 -Wall\nOBJS = {}\n\nprog: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n\n\
         %.o: %.c proj.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\n\nclean:\n\trm -f prog $(OBJS)\n",
        objs.join(" ")
    );
    std::fs::write(dir.join("Makefile"), make)?;
    Ok(())
}

/// Runs `script` in host `h`'s network namespace and the machine's mounts (as the nodes, and as runc needs), and
/// returns the columns of microseconds it printed, one line per rep, in milliseconds.
fn timed<const N: usize>(h: &Host, script: &str) -> Result<[Vec<f64>; N]> {
    let o = output(&mut h.cmd_sharing_mounts("sh", ["-c", script]), SCRIPT_TIMEOUT)?;
    if !o.status.success() {
        bail!("the timing script failed ({}): {}\n{}", o.status, text(&o.stdout), text(&o.stderr));
    }
    let mut cols: [Vec<f64>; N] = std::array::from_fn(|_| vec![]);
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        let v: Vec<&str> = l.split_whitespace().collect();
        if v.len() != N {
            bail!("the timing script printed `{l}`, not {N} figures");
        }
        for (c, v) in cols.iter_mut().zip(v) {
            c.push(v.parse::<f64>().with_context(|| format!("`{l}`"))? / 1000.0);
        }
    }
    Ok(cols)
}

/// The shell prologue of both parts: a clock in nanoseconds, and `metac` with host 1's socket.
fn prologue(h: &Host) -> Result<String> {
    Ok(format!(
        "set -e\nns() {{ date +%s%N; }}\nm() {{ {} --socket {} \"$@\"; }}\n",
        metac_tests::metac_bin()?.display(),
        h.socket().display()
    ))
}

/// Part 1: `true` three ways. Returns the medians (remote, local, runc), ms.
fn part_true(a: &Args, h: &Host) -> Result<[f64; 3]> {
    let b = h.dir().join("bundle");
    bundle(&b)?;
    let script = format!(
        r#"{prologue}
for i in $(seq 0 {reps}); do
  t0=$(ns); m run --rm --on b true; t1=$(ns)
  m run --rm true; t2=$(ns)
  runc --root {state} run --bundle {b} bench-$$-$i >/dev/null; t3=$(ns)
  [ $i -gt 0 ] && echo $(( (t1-t0)/1000 )) $(( (t2-t1)/1000 )) $(( (t3-t2)/1000 ))
done
"#,
        prologue = prologue(h)?,
        reps = a.reps,
        state = h.dir().join("runc-state").display(),
        b = b.display(),
    );
    let cols = timed::<3>(h, &script)?;
    Ok(cols.map(median))
}

/// What part 2 measured: medians in ms, and what A's exporters served per remote build (None without `metac fs
/// stats`, in builds before the content cache).
struct Compile {
    local: f64,
    cold: f64,
    warm: f64,
    served_cold: Option<u64>,
    served_warm: Option<u64>,
}

/// Bytes of file content this host's exporters have served, where the build has `metac fs stats`.
fn served(h: &Host) -> Option<u64> {
    json(h, &["fs", "stats"]).ok()?["served_bytes"].as_u64()
}

/// Part 2: the compile, one remote build cold, then warm remote builds interleaved with local ones.
fn part_compile(a: &Args, h: &Host) -> Result<Compile> {
    let dir = h.dir().join("proj");
    project(&dir, a.files)?;
    // A local build first, not counted: the machine's page cache then holds cc and the headers, so that the cold
    // remote build measures what B has not seen, not the disk. Its output is what every build must print.
    let script = format!("{}cd {}\nmake -s -j2 >/dev/null\n./prog\n", prologue(h)?, dir.display());
    let o = output(&mut h.cmd_sharing_mounts("sh", ["-c", &script]), SCRIPT_TIMEOUT)?;
    if !o.status.success() {
        bail!("the local build failed: {}", text(&o.stderr));
    }
    let want = text(&o.stdout);
    let check = format!("[ \"$(./prog)\" = {want} ] || {{ echo \"prog printed $(./prog), not {want}\" >&2; exit 1; }}");
    let build_on_b = "m run --rm --on b make -s -j2 >/dev/null";
    let head = format!("{}cd {}\n", prologue(h)?, dir.display());
    let cold_script =
        format!("{head}make -s clean\nt0=$(ns); {build_on_b}; t1=$(ns)\n{check}\necho $(( (t1-t0)/1000 ))\n");
    let warm_script = format!(
        r#"{head}for i in $(seq 1 {reps}); do
  make -s clean
  t0=$(ns); make -s -j2 >/dev/null; t1=$(ns)
  {check}
  make -s clean
  t2=$(ns); {build_on_b}; t3=$(ns)
  {check}
  echo $(( (t1-t0)/1000 )) $(( (t3-t2)/1000 ))
done
"#,
        reps = a.reps,
    );
    let s0 = served(h);
    let [cold] = timed::<1>(h, &cold_script)?;
    let s1 = served(h);
    let [local, warm] = timed::<2>(h, &warm_script)?;
    let s2 = served(h);
    let per = |a: Option<u64>, b: Option<u64>, n: usize| Some(b?.saturating_sub(a?) / n as u64);
    Ok(Compile {
        local: median(local),
        cold: cold[0],
        warm: median(warm),
        served_cold: per(s0, s1, 1),
        served_warm: per(s1, s2, a.reps),
    })
}

/// What the remote process sees: the node's hostname, and the filesystem type of its root (a FUSE bind of A's).
fn where_it_runs(h: &Host) -> Result<String> {
    let cwd = h.dir().display().to_string();
    let probe =
        "echo $(hostname) $(awk '$5 == \"/\" { for (i = 7; $i != \"-\"; i++) {}; print $(i+1) }' /proc/self/mountinfo)";
    let script = format!("{}cd {cwd}\nm run --rm --on b sh -c '{}'\n", prologue(h)?, probe.replace('\'', "'\\''"));
    let o = output(&mut h.cmd_sharing_mounts("sh", ["-c", &script]), Duration::from_secs(120))?;
    if !o.status.success() {
        bail!("a remote probe failed: {}", text(&o.stderr));
    }
    Ok(text(&o.stdout))
}

pub fn run(a: Args) -> Result<()> {
    if a.reps == 0 || a.files == 0 {
        bail!("--reps and --files must be at least 1");
    }
    let lab = Lab::new(2)?;
    let nodes = start(&lab)?;
    let (h1, h2) = (lab.host(1), lab.host(2));
    grant(h1, h2)?;
    let probe = where_it_runs(h1)?;
    println!("remote_run_sees: {probe} (hostname, root filesystem type)");
    if !probe.starts_with("lab-2 ") || !probe.contains("fuse") {
        bail!("`metac run --on b` should run on lab-2 with A's root over FUSE; it saw `{probe}`");
    }

    let [remote, local, runc] = part_true(&a, h1)?;
    println!("metac_run_on_b_true_ms: {remote:.1} ms (median of {})", a.reps);
    println!("metac_run_local_true_ms: {local:.1} ms");
    println!("runc_run_true_ms: {runc:.1} ms");
    println!("ratio_remote_true_over_local: {:.2}", remote / local);

    let c = part_compile(&a, h1)?;
    let mib =
        |b: Option<u64>| b.map_or("n/a (no `metac fs stats`)".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
    println!("compile_files: {} C files, make -j2, -O2", a.files);
    println!("compile_local_ms: {:.0} ms (median of {})", c.local, a.reps);
    println!("compile_on_b_cold_ms: {:.0} ms (the first remote build)", c.cold);
    println!("compile_on_b_warm_ms: {:.0} ms (median of {})", c.warm, a.reps);
    println!("compile_on_b_cold_served_by_a: {}", mib(c.served_cold));
    println!("compile_on_b_warm_served_by_a: {} per build", mib(c.served_warm));
    println!("ratio_cold_compile_over_local: {:.2}", c.cold / c.local);

    println!("remote true / runc: {:.2}x (goal <= 2x)", remote / runc);
    println!("warm compile --on b / local: {:.2}x (goal <= 1.5x)", c.warm / c.local);
    drop(nodes);
    Ok(())
}
