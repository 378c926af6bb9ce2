//! Link-time settings for the BPF object. aya-build sets RUSTFLAGS itself, so link arguments given
//! here are the way to reach bpf-linker, which does the final code generation.
fn main() {
    // Packet headers sit at arbitrary alignment; x86-64 and arm64 kernels allow misaligned packet
    // loads, so unaligned reads compile to single loads instead of byte-by-byte sequences.
    println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
    // Rebuild when the linker changes (a new LLVM changes the object).
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
