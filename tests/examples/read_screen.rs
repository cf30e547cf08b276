//! Prints the text of a screenshot of the manager's console (a PPM from QEMU's `screendump`),
//! as the screen tests read it: `cargo run -p qemu-tests --example read_screen -- FILE.ppm`.

fn main() -> anyhow::Result<()> {
    let path =
        std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: read_screen FILE.ppm"))?;
    let pic = qemu_tests::qemu::Picture::parse_ppm(&std::fs::read(&path)?)?;
    for line in qemu_tests::screen::read_text(&pic) {
        println!("{line}");
    }
    Ok(())
}
