// Sim-only bench top of hw.accelerator.Accelerator: plays DRAM on its memory port and runs images.
//
// DRAM is DEPTH beats of BEAT_BITS; a read's data is on mem_rdata the cycle after mem_re. For each
// sample s < +samples it loads <+dir>/image_<s>.hex ($readmemh, +beats beats), pulses start for one
// clock edge, waits for done, and dumps the beats to <+dir>/out_<s>.hex. Every retire is logged to
// <+dir>/retire.log as "sample pc cycles"; a sample still running after +max_cycles is logged as
// "timeout sample pc cycles" and ends the run.
`timescale 1ns/1ps
module tb_accelerator;
  parameter BEAT_BITS = 64;
  parameter DEPTH = 65536;
  reg clk = 1'b0;
  reg rst = 1'b1;
  reg start = 1'b0;
  wire [31:0] mem_addr;
  wire mem_re, mem_we, done, retire;
  wire [BEAT_BITS-1:0] mem_wdata;
  reg [BEAT_BITS-1:0] mem_rdata = 0;
  wire [47:0] cycles;
  wire [31:0] pc;
  reg [BEAT_BITS-1:0] dram [0:DEPTH-1];

  accelerator dut(.clk(clk), .rst(rst), .start(start), .done(done), .mem_addr(mem_addr), .mem_re(mem_re),
                  .mem_we(mem_we), .mem_wdata(mem_wdata), .mem_rdata(mem_rdata), .cycles(cycles),
                  .retire(retire), .pc(pc));

  always #5 clk = ~clk;

  always @(posedge clk) begin
    if (mem_re) mem_rdata <= dram[mem_addr];
    if (mem_we) dram[mem_addr] <= mem_wdata;
  end

  integer log, s, samples, beats, max_cycles;
  reg [8*1024-1:0] dir, path;

  always @(posedge clk) begin
    if (retire) $fwrite(log, "%0d %0d %0d\n", s, pc, cycles);
    if (!rst && !done && cycles > max_cycles) begin
      $fwrite(log, "timeout %0d %0d %0d\n", s, pc, cycles);
      $fclose(log);
      $finish;
    end
  end

  initial begin
    if (!$value$plusargs("dir=%s", dir)) dir = ".";
    if (!$value$plusargs("samples=%d", samples)) samples = 1;
    if (!$value$plusargs("beats=%d", beats)) beats = DEPTH;
    if (!$value$plusargs("max_cycles=%d", max_cycles)) max_cycles = 1000000;
    s = 0;
    $sformat(path, "%0s/retire.log", dir);
    log = $fopen(path, "w");
    repeat (2) @(posedge clk);
    @(negedge clk) rst = 1'b0;
    for (s = 0; s < samples; s = s + 1) begin
      $sformat(path, "%0s/image_%0d.hex", dir, s);
      $readmemh(path, dram, 0, beats - 1);
      @(negedge clk) start = 1'b1;
      @(negedge clk) start = 1'b0;
      wait (done);
      $sformat(path, "%0s/out_%0d.hex", dir, s);
      $writememh(path, dram, 0, beats - 1);
    end
    $fclose(log);
    $finish;
  end
endmodule
