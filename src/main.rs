// mimalloc: the engine allocates small, short-lived buffers on every core; mimalloc's
// thread-local free lists keep that off the shared heap and out of each other's way.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {}
