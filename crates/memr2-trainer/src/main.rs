//! The `memr2` command-line program.

fn main() {
    println!("memr2");
}
