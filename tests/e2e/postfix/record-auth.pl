#!/usr/bin/perl
# A recording proxy for a line protocol on unix sockets:
#   record-auth.pl LISTEN_PATH UPSTREAM_PATH OUTPUT_FILE
# Listens on LISTEN_PATH (mode 0666; guard it with its folder), connects each client
# to UPSTREAM_PATH, passes bytes both ways unchanged and writes every complete line to
# OUTPUT_FILE in the order the proxy saw them:
#   "C: " + line   client (Postfix) to server (mailauthd)
#   "S: " + line   server to client
# The line's bytes follow the prefix as they were, TABs included, without the final
# LF. "# ..." lines mark connections and how they ended. A connection whose client
# never sends a line (someone checking that the socket answers) is not written.
# Runs until killed.
use strict;
use warnings;
use IO::Socket::UNIX;
use IO::Select;
use Socket qw(SOCK_STREAM);

my ($listen_path, $upstream_path, $out_path) = @ARGV;
die "usage: $0 LISTEN_PATH UPSTREAM_PATH OUTPUT_FILE\n" unless defined $out_path;

open(my $out, '>>', $out_path) or die "$out_path: $!\n";
binmode($out);
$out->autoflush(1);

unlink $listen_path;
my $server = IO::Socket::UNIX->new(Type => SOCK_STREAM, Local => $listen_path, Listen => 16)
    or die "listen on $listen_path: $!\n";
chmod 0666, $listen_path or die "chmod $listen_path: $!\n";

my $select = IO::Select->new($server);
my $next_conn = 1;
my %end;    # fileno -> { peer, dir ("C"/"S"), buf (bytes after the last LF), conn }
my %held;   # connection -> text not written yet (its client has not sent a line)
my %label;  # connection -> number in the recording, once written
my $shown = 0;

$SIG{TERM} = $SIG{INT} = sub {
    print $out "# connection $label{$_} still open when the recording ended\n"
        for sort { $label{$a} <=> $label{$b} } keys %label;
    unlink $listen_path;
    exit 0;
};

sub record {
    my ($c, $dir, $text) = @_;
    if (exists $held{$c}) {
        $held{$c} .= $text;
        return unless $dir eq 'C';
        $label{$c} = ++$shown;
        $text = "# connection $label{$c}\n" . delete $held{$c};
    }
    print $out $text;
}

sub finish {
    my ($fh) = @_;
    my $me = $end{fileno $fh};
    my $other = $me->{peer};
    my $c = $me->{conn};
    for my $s ($fh, $other) {
        my $e = delete $end{fileno $s} or next;
        record($c, $e->{dir}, "$e->{dir}: $e->{buf}\n# (no LF at the end of the line above)\n")
            if length $e->{buf};
        $select->remove($s);
    }
    my $who = $me->{dir} eq 'C' ? 'the client' : 'the server';
    print $out "# connection $label{$c} closed by $who\n" if exists $label{$c};
    delete $held{$c};
    delete $label{$c};
    close $fh;
    close $other;
}

while (1) {
    for my $fh ($select->can_read) {
        if ($fh == $server) {
            my $client = $server->accept or next;
            my $upstream = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $upstream_path);
            if (!$upstream) {
                print $out "# a connection refused: cannot reach $upstream_path: $!\n";
                close $client;
                next;
            }
            my $c = $next_conn++;
            $held{$c} = '';
            $end{fileno $client} = { peer => $upstream, dir => 'C', buf => '', conn => $c };
            $end{fileno $upstream} = { peer => $client, dir => 'S', buf => '', conn => $c };
            $select->add($client, $upstream);
            next;
        }
        my $e = $end{fileno $fh} or next;
        my $got = sysread($fh, my $data, 65536);
        if (!$got) {
            finish($fh);
            next;
        }
        my $off = 0;
        while ($off < length $data) {
            my $w = syswrite($e->{peer}, $data, length($data) - $off, $off);
            last unless $w;
            $off += $w;
        }
        $e->{buf} .= $data;
        while ($e->{buf} =~ s/^([^\n]*)\n//) {
            record($e->{conn}, $e->{dir}, "$e->{dir}: $1\n");
        }
    }
}
