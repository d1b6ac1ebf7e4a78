//! `metac vm` between real hosts: host 1 exports a disk image (`metac file export`), host 2 boots a VM from it with
//! real qemu and a real kernel (the machine's /boot, from `linux-image-amd64`) and a busybox initramfs built here
//! ([`metac_tests::Initramfs`]), whose /init works on /dev/vda and powers off. Build the binary first (`cargo build
//! --bin metac`); the tests need root, qemu (`qemu-system-x86`), a guest kernel and `busybox-static`, and never skip.
//! Under `CI=true` they also fail when /dev/kvm cannot be opened; where /dev/kvm is PVM only (no hardware
//! virtualisation, as in some cloud VMs), the node uses TCG and says why, and the tests check that it does.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use metac_tests::{read_until, require_root, wait_until, GuestKernel, Host, Initramfs, Lab};

/// The guest's kernel command line: the serial console, no chatter, no reboot loop on a panic.
const APPEND: &str = "console=ttyS0 quiet panic=-1";
/// A user other than root, allowed to use the nodes' API (they run with `--api-group 4242`).
const USER: &[&str] = &["--reuid=65534", "--regid=65534", "--groups=4242"];

/// Panics unless qemu is installed: VM tests do not skip.
fn require_qemu() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if !std::env::split_paths(&path).any(|d| d.join("qemu-system-x86_64").is_file()) {
        panic!("qemu-system-x86_64 is not installed: `apt-get install qemu-system-x86` (scripts/install-deps.sh); VM tests do not skip");
    }
}

/// What `vm start` should report: "KVM" or "TCG". Under CI, a /dev/kvm that cannot be opened fails the test.
fn expected_accel() -> &'static str {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI: /dev/kvm cannot be opened ({e}): the VM tests need KVM in CI");
        }
        return "TCG";
    }
    let module = |m: &str| Path::new("/sys/module").join(m).exists();
    if module("kvm_pvm") && !module("kvm_intel") && !module("kvm_amd") {
        "TCG"
    } else {
        "KVM"
    }
}

/// The guest kernel, and an initramfs at `h`'s `name.cpio` whose /init waits for /dev/vda and runs `script`.
fn guest(h: &Host, name: &str, script: &str) -> (GuestKernel, PathBuf) {
    let kernel = GuestKernel::find().expect("a guest kernel (linux-image-amd64)");
    let path = h.dir().join(format!("{name}.cpio"));
    let mut i = Initramfs::new().expect("busybox-static");
    i.modules(&kernel, &metac_tests::initramfs::DISK_MODULES).expect("virtio modules").init(&["/dev/vda"], script);
    i.write(&path).unwrap();
    (kernel, path)
}

/// An exported disk image of `len` bytes filled with `fill`, on `h`; its ref.
fn export_disk(h: &Host, name: &str, len: usize, fill: u8) -> (PathBuf, String) {
    let disk = h.dir().join(name);
    std::fs::write(&disk, vec![fill; len]).unwrap();
    let r = h.metac_ok(&["file", "export", disk.to_str().unwrap()]);
    assert!(r.starts_with("ref://"), "{r}");
    (disk, r)
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `metac args...` on `h`, any exit status.
fn metac(h: &Host, args: &[&str]) -> Output {
    match h.metac(args) {
        Ok(o) => o,
        Err(metac_tests::Error::Failed { output, .. }) => output,
        Err(e) => panic!("metac {args:?} on host {}: {e}", h.index()),
    }
}

/// `vm start` arguments booting `initrd` from `kernel` with one drive.
fn start_args<'a>(drive: &'a str, kernel: &'a GuestKernel, initrd: &'a Path) -> Vec<&'a str> {
    vec![
        "vm",
        "start",
        "--drive",
        drive,
        "--kernel",
        kernel.image.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--append",
        APPEND,
        "--memory",
        "256M",
    ]
}

/// How many of `h`'s binds are file binds.
fn file_binds(h: &Host) -> usize {
    h.metac_json(&["binds", "--kind", "file"]).as_array().unwrap().len()
}

/// The VM boots from the remote disk and writes a marker to it; once it powered off, the marker is in the file on
/// the exporter, the drive's bind is gone, and `vm ls --all` shows how it ended.
#[test]
fn a_vm_boots_from_a_remote_disk_and_its_write_reaches_the_exporter() {
    require_root();
    require_qemu();
    let accel = expected_accel();
    let lab = Lab::new(2).unwrap();
    let _nodes = lab.start_nodes(&[]).unwrap();
    let (a, b) = (lab.host(1), lab.host(2));
    let (disk, r) = export_disk(a, "disk.img", 4 << 20, 0);
    let script = "echo metac-marker-$((6*7)) | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null && echo wrote-marker";
    let (kernel, initrd) = guest(b, "marker", script);

    let drive = format!("uri={r}");
    let mut args = start_args(&drive, &kernel, &initrd);
    args.extend(["--name", "boot", "--console"]);
    let t = Instant::now();
    let o = metac(b, &args);
    let out = text(&o);
    eprintln!("vm start --console ({accel}) ran {:?}:\n{out}", t.elapsed());
    assert!(o.status.success(), "{out}");
    assert!(out.contains(&format!("vm boot: started with {accel}")), "{out}");
    assert!(out.contains("wrote-marker"), "the guest's console reaches the CLI: {out}");

    let data = std::fs::read(&disk).unwrap();
    assert!(data.starts_with(b"metac-marker-42\n"), "the marker is on the exporter: {:?}", &data[..32]);
    assert_eq!(data.len(), 4 << 20);
    assert_eq!(file_binds(b), 0, "the drive's bind ends with the VM");
    let l = b.metac_json(&["vm", "ls", "--all"]);
    let vm = &l[0];
    assert_eq!((vm["name"].as_str(), vm["state"].as_str()), (Some("boot"), Some("exited")), "{l}");
    assert_eq!(vm["exit"]["code"], 0, "{l}");
    assert_eq!(vm["accel"], accel.to_lowercase());
    assert_eq!(b.metac_json(&["vm", "ls"]).as_array().unwrap().len(), 0, "only running ones without --all");

    // Without --console the CLI waits for the end; the same name is free again once the VM ended.
    let mut args = start_args(&drive, &kernel, &initrd);
    args.extend(["--name", "boot"]);
    let o = metac(b, &args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("wrote-marker"), "no console: {}", text(&o));

    // A qcow2 image: qemu's qcow2 driver on the bind, the guest's write landing inside the image on the exporter.
    // An export does not grow, so the image has its metadata (and its size) allocated up front.
    let qcow = a.dir().join("disk.qcow2");
    let create = ["create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", qcow.to_str().unwrap(), "4M"];
    a.run("qemu-img", create).unwrap();
    let rq = a.metac_ok(&["file", "export", qcow.to_str().unwrap()]);
    let drive = format!("uri={rq},format=qcow2");
    let o = metac(b, &start_args(&drive, &kernel, &initrd));
    assert!(o.status.success(), "{}", text(&o));
    let raw = a.dir().join("qcow.raw");
    a.run("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", qcow.to_str().unwrap(), raw.to_str().unwrap()]).unwrap();
    assert!(std::fs::read(&raw).unwrap().starts_with(b"metac-marker-42\n"), "the marker is in the qcow2 image");
    assert_eq!(
        b.metac_json(&["vm", "ls", "--all"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["drives"][0]["format"] == "qcow2")
            .count(),
        1
    );
}

/// A read-only ref, or `readonly` in the drive spec, gives the guest a read-only disk: its write fails, and the
/// file on the exporter is unchanged.
#[test]
fn a_read_only_ref_gives_a_read_only_drive() {
    require_root();
    require_qemu();
    let lab = Lab::new(2).unwrap();
    let _nodes = lab.start_nodes(&[]).unwrap();
    let (a, b) = (lab.host(1), lab.host(2));
    let (disk, r) = export_disk(a, "ro.img", 1 << 20, 0x5a);
    let ro = a.metac_ok(&["ref", "delegate", &r, "--read-only"]);
    let script = "echo ro=$(cat /sys/block/vda/ro); echo overwrite | dd of=/dev/vda conv=fsync 2>/dev/null; \
                  echo dd-rc=$?; head -c 4 /dev/vda | od -An -tx1";
    let (kernel, initrd) = guest(b, "ro", script);
    for drive in [format!("uri={ro}"), format!("uri={r},readonly")] {
        let mut args = start_args(&drive, &kernel, &initrd);
        args.push("--console");
        let o = metac(b, &args);
        let out = text(&o);
        assert!(o.status.success(), "{out}");
        assert!(out.contains("ro=1"), "the guest sees a read-only disk: {out}");
        assert!(out.contains("dd-rc=1"), "the guest's write fails: {out}");
        assert!(out.contains("5a 5a 5a 5a"), "the guest reads the disk: {out}");
        let data = std::fs::read(&disk).unwrap();
        assert!(data.iter().all(|&x| x == 0x5a), "the file on the exporter is unchanged ({drive})");
    }
    let l = b.metac_json(&["vm", "ls", "--all"]);
    assert!(l.as_array().unwrap().iter().all(|v| v["drives"][0]["readonly"] == true), "{l}");
}

/// A running VM is listed (`vm ls`, `ps`) to its owner only, its console shows what it printed before the console
/// came, `vm stop` ends it (the guest ignores the power button: qemu quits after the timeout) and unbinds its
/// drive, `--force` kills at once; names are unique, and bad requests are refused with what is wrong.
#[test]
fn vm_ls_console_and_stop_and_refusals() {
    require_root();
    require_qemu();
    let lab = Lab::new(2).unwrap();
    let mut nodes = lab.start_nodes(&["--api-group", "4242"]).unwrap();
    let (a, b) = (lab.host(1), lab.host(2));
    let (_disk, r) = export_disk(a, "sleep.img", 1 << 20, 0);
    let script = "echo guest-is-up; while read line; do echo \"got:$line\"; done; sleep 600";
    let (kernel, initrd) = guest(b, "sleep", script);
    let drive = format!("uri={r}");
    let mut args = start_args(&drive, &kernel, &initrd);
    args.extend(["--name", "sleeper", "--detach", "--cpus", "1"]);
    assert_eq!(b.metac_ok(&args), "sleeper");

    let l = b.metac_json(&["vm", "ls"]);
    let vm = &l[0];
    assert_eq!((vm["name"].as_str(), vm["state"].as_str()), (Some("sleeper"), Some("running")), "{l}");
    assert_eq!((vm["cpus"].as_u64(), vm["memory_mib"].as_u64()), (Some(1), Some(256)), "{l}");
    let resource = vm["drives"][0]["resource"].as_str().unwrap().to_string();
    let exports = a.metac_json(&["exports"]);
    assert!(exports[0]["id"].as_str().unwrap().starts_with(&resource), "{exports} vs {resource}");
    let text_ls = b.metac_ok(&["vm", "ls"]);
    assert!(text_ls.contains("sleeper") && text_ls.contains(&format!("vda={resource}")), "{text_ls}");
    let ps = b.metac_json(&["ps"]);
    assert!(ps.as_array().unwrap().iter().any(|c| c["type"] == "vm" && c["name"] == "sleeper"), "{ps}");
    assert!(b.metac_ok(&["ps"]).contains("VMs"), "metac ps has a VM section");
    assert_eq!(file_binds(b), 1);

    // The console: what the guest printed before it attached, then live; it ends when the VM does.
    let console = b
        .spawn(
            metac_tests::metac_bin().unwrap(),
            ["--socket", b.socket().to_str().unwrap(), "vm", "console", "sleeper"],
        )
        .unwrap();
    let log = console.log_path().unwrap().to_path_buf();
    wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        Ok(std::fs::read_to_string(&log).unwrap_or_default().contains("guest-is-up"))
    })
    .unwrap_or_else(|e| {
        panic!("the console shows the guest's output: {e}: {}", std::fs::read_to_string(&log).unwrap_or_default())
    });

    // On a terminal: typed lines reach the guest, Ctrl-] detaches and leaves the VM running.
    let (mut child, master) = metac_tests::metac_on_pty(b, &["vm", "console", "sleeper"]);
    let seen = read_until(&master, "guest-is-up", Duration::from_secs(20));
    assert!(seen.contains("Ctrl-] detaches") && seen.contains("guest-is-up"), "{seen:?}");
    rustix::io::write(&master, b"hello\n").unwrap();
    let seen = read_until(&master, "got:hello", Duration::from_secs(20));
    assert!(seen.contains("got:hello"), "{seen:?}");
    rustix::io::write(&master, b"\x1d").unwrap();
    let status = wait_child(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(read_until(&master, "detached", Duration::from_secs(5)).contains("detached from vm sleeper"));
    assert_eq!(b.metac_json(&["vm", "ls"])[0]["state"], "running");

    // Another user sees none of it and cannot stop it.
    let o = b.metac_as(USER, &["--json", "vm", "ls", "--all"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]", "{}", text(&o));
    let o = b.metac_as(USER, &["vm", "stop", "sleeper", "--force"]).unwrap();
    assert!(!o.status.success() && text(&o).contains("no VM named sleeper"), "{}", text(&o));
    // Nor may it share directories with a guest (qemu's 9p server would read them as the node's user).
    let o = b.metac_as(USER, &["run", "--vm", "-w", "/", "true"]).unwrap();
    assert!(!o.status.success() && text(&o).contains("only root may share directories"), "{}", text(&o));

    // Names are unique, and checked.
    let mut dup = start_args(&drive, &kernel, &initrd);
    dup.extend(["--name", "sleeper", "--detach"]);
    let o = metac(b, &dup);
    assert!(!o.status.success() && text(&o).contains("a VM named sleeper is running already"), "{}", text(&o));
    let mut bad = start_args(&drive, &kernel, &initrd);
    bad.extend(["--name", "no/slash"]);
    assert!(text(&metac(b, &bad)).contains("bad VM name \"no/slash\""));

    // Stop: the power button, ignored by this guest, then quit after the timeout.
    let t = Instant::now();
    let v = b.metac_json(&["vm", "stop", "sleeper", "--timeout", "2"]);
    let took = t.elapsed();
    assert_eq!((v["state"].as_str(), v["exit"]["stopped"].as_bool()), (Some("exited"), Some(true)), "{v}");
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(15), "stop took {took:?}");
    assert_eq!(file_binds(b), 0, "vm stop unbinds the drive");
    assert_eq!(b.metac_json(&["vm", "ls"]).as_array().unwrap().len(), 0);
    wait_until(Duration::from_secs(10), Duration::from_millis(50), || Ok(!console.is_running()))
        .expect("the console ends with the VM");

    // --force kills at once.
    let mut args = start_args(&drive, &kernel, &initrd);
    args.extend(["--name", "forced", "--detach"]);
    b.metac_ok(&args);
    let t = Instant::now();
    let v = b.metac_json(&["vm", "stop", "forced", "--force"]);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!((v["state"].as_str(), v["exit"]["signal"].as_i64()), (Some("exited"), Some(9)), "{v}");
    assert_eq!(file_binds(b), 0);

    // Refusals: a bad drive spec, a ref of another kind, a kernel that is not there.
    let o = metac(b, &["vm", "start", "--drive", &format!("uri={r},format=vmdk")]);
    assert!(text(&o).contains("format \"vmdk\" is not one metac knows: raw or qcow2"), "{}", text(&o));
    let dir = a.dir().join("tree");
    std::fs::create_dir_all(&dir).unwrap();
    let fs_ref = a.metac_ok(&["fs", "export", &format!("local:{}", dir.display())]);
    let o = metac(b, &["vm", "start", "--drive", &format!("uri={fs_ref}"), "--detach"]);
    assert!(
        text(&o).contains("drive 1") && text(&o).contains("this ref is for a fs resource, not a file"),
        "{}",
        text(&o)
    );
    let o = metac(b, &["vm", "start", "--drive", &drive, "--kernel", "/no/such/vmlinuz", "--detach"]);
    assert!(text(&o).contains("cannot open --kernel /no/such/vmlinuz"), "{}", text(&o));
    assert_eq!(file_binds(b), 0, "a refused start leaves no bind");

    // A VM dies with its node, even one killed outright (PR_SET_PDEATHSIG).
    let mut args = start_args(&drive, &kernel, &initrd);
    args.extend(["--name", "orphan", "--detach"]);
    b.metac_ok(&args);
    let pid = b.metac_json(&["vm", "ls"])[0]["pid"].as_u64().unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    nodes[1].kill9();
    wait_until(Duration::from_secs(10), Duration::from_millis(20), || Ok(!Path::new(&format!("/proc/{pid}")).exists()))
        .expect("qemu ends with the node");
}

/// Waits for `child` at most `t`; kills it and fails after that.
fn wait_child(child: &mut std::process::Child, t: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + t;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the command did not end within {t:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `metac run` on `h` with `stdin`, any exit status.
fn run_in(h: &Host, args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut cmd = h.cmd(metac_tests::metac_bin().unwrap(), ["--socket", h.socket().to_str().unwrap(), "run"]);
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("metac runs");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("metac run {args:?} took more than 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// `metac run --vm`: the command runs in a guest booted from the machine's kernel, on the root and mounts it is
/// given (shared over virtio-9p): it prints the guest's kernel release, reads and writes a host directory, gets
/// its environment and hostname, and its exit status comes back; stdin reaches it with `-i`; nothing else is
/// printed (no kernel messages). Options a VM cannot honour are refused.
#[test]
fn a_command_runs_in_a_vm_with_its_mounts_stdio_and_exit_status() {
    require_root();
    require_qemu();
    let lab = Lab::new(1).unwrap();
    let _nodes = lab.start_nodes(&[]).unwrap();
    let h = lab.host(1);
    let kernel = GuestKernel::find().expect("a guest kernel (linux-image-amd64)");
    let root = metac_tests::busybox_root(h.dir());
    let data = h.dir().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("in.txt"), "from the host\n").unwrap();
    let (root_m, data_m) = (format!("/=local:{}", root.display()), format!("/data=local:{}", data.display()));
    let script = "uname -r; cat /data/in.txt; echo written > /data/out.txt; echo $A; hostname; exit 3";
    let t = Instant::now();
    let o = run_in(
        h,
        &["--vm", "--name", "vmrun1", "-e", "A=b c", "--mount", &root_m, "--mount", &data_m, "sh", "-c", script],
        b"",
    );
    eprintln!("metac run --vm took {:?}: {}", t.elapsed(), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(3), "the exit status comes back: {}", String::from_utf8_lossy(&o.stderr));
    let expected = format!("{}\nfrom the host\nb c\nvmrun1\n", kernel.version);
    assert_eq!(String::from_utf8_lossy(&o.stdout), expected, "the command's output and nothing else");
    assert_eq!(std::fs::read_to_string(data.join("out.txt")).unwrap(), "written\n", "its write is on the host");
    let accel = expected_accel();
    let said = String::from_utf8_lossy(&o.stderr);
    assert_eq!(said.contains("runs under TCG"), accel == "TCG", "the run says when it is emulated: {said}");

    let o = run_in(h, &["--vm", "-i", "--mount", &root_m, "cat"], b"hi\nthere\n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\nthere\n", "stdin reaches the command, and its end too");

    // The service name of the original metac; the host's root, read-only, when none is given.
    let o =
        run_in(h, &["--service=computevm", "-w", "/", "sh", "-c", "test -x /bin/sh && ! touch /metac-vm-test"], b"");
    assert!(o.status.success(), "{o:?}");
    assert!(!Path::new("/metac-vm-test").exists());
    // The default working directory is this one, which is not in the guest when it is under /tmp: said, exit 125.
    let o = run_in(h, &["--vm", "true"], b"");
    assert_eq!(o.status.code(), Some(125), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("give --workdir"), "{o:?}");

    let o = run_in(h, &["--vm", "--user", "1", "true"], b"");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--user does not go with --vm"), "{o:?}");
    let o = run_in(h, &["--vm", "--mount", "/x=ref://[fd6f::1]/AAAA", "true"], b"");
    assert!(!o.status.success(), "an fs ref mount is refused for now");
}

/// The exporter of a running VM's disk is killed with SIGKILL and started again: the guest's IO pauses (the bind
/// keeps qemu's connection and sends the unanswered requests again) and goes on; its writes before and after are
/// both in the exporter's file.
#[test]
fn a_vm_rides_out_its_disks_exporter_restarting() {
    require_root();
    require_qemu();
    let lab = Lab::new(2).unwrap();
    let mut nodes = lab.start_nodes(&[]).unwrap();
    let (a, b) = (lab.host(1), lab.host(2));
    let (disk, r) = export_disk(a, "disk.img", 4 << 20, 0);
    // First marker at once; the second after the host has restarted the exporter (it waits for `go` on the disk).
    let script = "echo first-marker | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null\n\
        i=0; while [ $i -lt 600 ]; do dd if=/dev/vda bs=512 skip=2048 count=1 iflag=direct 2>/dev/null | grep -q go && break; \
        sleep 0.1; i=$((i+1)); done\n\
        echo second-marker | dd of=/dev/vda bs=512 seek=1 conv=sync,fsync 2>/dev/null";
    let (kernel, initrd) = guest(b, "restart", script);
    let drive = format!("uri={r}");
    let mut args = start_args(&drive, &kernel, &initrd);
    args.extend(["--name", "steady", "--detach"]);
    let o = metac(b, &args);
    assert!(o.status.success(), "{}", text(&o));
    let has = |marker: &[u8], at: usize| std::fs::read(&disk).unwrap()[at..].starts_with(marker);
    wait_until(Duration::from_secs(120), Duration::from_millis(100), || Ok(has(b"first-marker", 0)))
        .expect("the first marker reaches the exporter");

    nodes[0].kill9();
    std::thread::sleep(Duration::from_millis(500));
    nodes[0].restart().unwrap();
    // Tell the guest to go on: a block it polls, written on the exporter's side.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.write_all_at(b"go", 2048 * 512).unwrap();
        f.sync_all().unwrap();
    }
    wait_until(Duration::from_secs(120), Duration::from_millis(100), || Ok(has(b"second-marker", 512)))
        .expect("the guest's write after the restart reaches the exporter");
    let end: serde_json::Value = b.metac_json(&["vm", "stop", "steady", "--force"]);
    assert_eq!(end["name"], "steady");
}
