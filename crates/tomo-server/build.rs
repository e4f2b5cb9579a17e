//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds the directory at
//! compile time, and cargo does not know it reads it.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
