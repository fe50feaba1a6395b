# bench/plot.gp - the plots of bench/RESULTS.md (run by bench/report.py):
#   gnuplot -e "outdir='bench'" bench/plot.gp
# Reads outdir/sweep.dat, outdir/sweep-servers.txt and outdir/idle.dat.
if (!exists("outdir")) outdir = "."
servers = system("cat " . outdir . "/sweep-servers.txt")
n = words(servers)
set terminal pngcairo size 900,560 font "sans,10"
set key top left
set grid
set logscale x
set xlabel "connections"
set xtics (1, 10, 50, 100, 500, 1000)

set output outdir . "/echo_rps_vs_conns.png"
set title "Echo 64 B: requests/s against connections (1 server core)"
set ylabel "requests/s"
set yrange [0:*]
plot for [i=1:n] outdir . "/sweep.dat" using 1:(column(2*i)) with linespoints lw 2 title word(servers, i)

set output outdir . "/echo_p99_vs_conns.png"
set title "Echo 64 B: p99 latency against connections"
set ylabel "p99 latency (µs)"
set logscale y
set yrange [*:*]
plot for [i=1:n] outdir . "/sweep.dat" using 1:(column(2*i+1)) with linespoints lw 2 title word(servers, i)

unset logscale
unset xtics
set xtics rotate by -30
set output outdir . "/idle_rss.png"
set title "Server RSS per idle connection"
set ylabel "bytes per connection"
set xlabel ""
set style fill solid 0.6
set boxwidth 0.6
set yrange [0:*]
plot outdir . "/idle.dat" using 1:3:xtic(2) with boxes notitle, \
     "" using 1:3:(sprintf("%.0f", $3)) with labels offset 0,0.7 notitle
