//! `sqlx::migrate!` embeds `migrations/` at compile time; cargo rebuilds
//! the crate when a migration is added or changed only if told so.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
