//! Only for the offline CUDA build (trainer/cuda/build.sh): llvm-config names some system
//! libraries by path (`/usr/lib/.../libz3.so`), which tracel-llvm-bundler turns into
//! `-llibz3`; the script makes a directory of `lib<name>.so` links and passes it here.

fn main() {
    println!("cargo::rerun-if-env-changed=RSB_EXTRA_LINK_DIR");
    if let Some(dir) = std::env::var_os("RSB_EXTRA_LINK_DIR") {
        println!("cargo::rustc-link-search=native={}", dir.to_string_lossy());
    }
}
