mod scratch_timing;
