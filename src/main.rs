fn main() {
    println!("msp-agent");
}
