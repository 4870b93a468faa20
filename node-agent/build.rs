//! Compiles the eBPF programs in `bpf/` with clang (`-target bpf`) into `$OUT_DIR`,
//! where `src/datapath/loader.rs` embeds them with `aya::include_bytes_aligned!`.
//!
//! Needs clang and libbpf-dev (Debian: `apt-get install clang libbpf-dev`); a
//! missing tool is a build error naming the package, never a silent skip.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The BPF objects: source file in `bpf/` -> object name in `$OUT_DIR`.
const OBJECTS: &[(&str, &str)] = &[("cm_tc.c", "cm_tc.bpf.o"), ("cm_lb.c", "cm_lb.bpf.o")];
/// Headers shared by the objects (rebuild when they change).
const HEADERS: &[&str] = &["cm_types.h", "cm_maps.h", "cm_policy.h"];

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let bpf_dir = manifest.join("bpf");
    for f in HEADERS.iter().chain(OBJECTS.iter().map(|(src, _)| src)) {
        println!("cargo:rerun-if-changed={}", bpf_dir.join(f).display());
    }
    println!("cargo:rerun-if-env-changed=CLANG");

    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    match Command::new(&clang).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => fail(&format!(
            "clang not found (tried `{clang}`): apt-get install clang libbpf-dev (or set CLANG=/path/to/clang)"
        )),
    }
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        fail("/usr/include/bpf/bpf_helpers.h not found: apt-get install libbpf-dev");
    }

    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_string());
    let target_arch_define = match arch.as_str() {
        "x86_64" => "x86",
        "aarch64" => "arm64",
        "riscv64" => "riscv",
        other => other,
    };
    let multiarch_include = multiarch_include_dir(&arch);

    for (src, obj) in OBJECTS {
        let out = out_dir.join(obj);
        let output = Command::new(&clang)
            .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
            .arg(format!("-D__TARGET_ARCH_{target_arch_define}"))
            .arg("-I")
            .arg(&multiarch_include)
            .arg("-I")
            .arg(&bpf_dir)
            .arg("-c")
            .arg(bpf_dir.join(src))
            .arg("-o")
            .arg(&out)
            .output();
        match output {
            Ok(o) if o.status.success() => {}
            Ok(o) => fail(&format!(
                "clang failed to compile bpf/{src}:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(e) => fail(&format!("cannot run clang for bpf/{src}: {e}")),
        }
    }
}

/// Debian keeps `asm/types.h` under `/usr/include/<multiarch>`; `-target bpf`
/// does not search it by itself.
fn multiarch_include_dir(arch: &str) -> PathBuf {
    let from_gcc = Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty());
    let triple = from_gcc.unwrap_or_else(|| format!("{arch}-linux-gnu"));
    let dir = PathBuf::from("/usr/include").join(triple);
    if !dir.join("asm/types.h").exists() {
        fail(&format!(
            "{}/asm/types.h not found: apt-get install linux-libc-dev (and gcc for `gcc -print-multiarch`)",
            dir.display()
        ));
    }
    dir
}

fn fail(msg: &str) -> ! {
    // cargo shows a panic message from build.rs verbatim; keep it one clear line.
    panic!("clustermesh-node-agent build: {msg}");
}
