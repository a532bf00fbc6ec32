//! Prints `src/dp/gaussian/cdf_table.rs`: the sampler's block-index table,
//! computed in big-integer arithmetic. Run by `scripts/gen-gaussian-table`.

fn main() {
    print!("{}", shroud::dp::gaussian::exact::render_table());
}
