#!/usr/bin/perl
# A transparent recorder for a unix stream socket: listens on LISTEN, connects
# each client to UPSTREAM and passes bytes both ways unchanged, writing every
# complete line to LOG as
#
#   <connection> C: <line>     client (Dovecot's auth-worker) to server
#   <connection> S: <line>     server (mailauthd) to client
#   <connection> -- <event>    connected / closed by client / closed by server
#
# with TAB shown as \t, a backslash as \\ and any other control byte as \xNN,
# so the log itself holds one protocol line per line.
#
#   perl auth-recorder.pl LISTEN UPSTREAM LOG
#
# Used by run.sh to capture what the Dovecot adapter really sends to mailauthd.
use strict;
use warnings;
use IO::Select;
use IO::Socket::UNIX;
use Socket qw(SOCK_STREAM);

my ($listen, $upstream, $logfile) = @ARGV;
die "usage: $0 LISTEN UPSTREAM LOG\n" unless defined $logfile;

unlink $listen;
my $server = IO::Socket::UNIX->new(Type => SOCK_STREAM, Local => $listen, Listen => 64)
	or die "listen on $listen: $!\n";
chmod 0666, $listen;
open my $log, '>>', $logfile or die "$logfile: $!\n";
$log->autoflush(1);

$SIG{TERM} = $SIG{INT} = sub { unlink $listen; exit 0 };
$SIG{PIPE} = 'IGNORE';

my $select = IO::Select->new($server);
my (%peer, %label, %conn, %buffer);
my $connections = 0;

sub shown {
	my ($line) = @_;
	$line =~ s/\\/\\\\/g;
	$line =~ s/\t/\\t/g;
	$line =~ s/([\x00-\x1f\x7f])/sprintf('\\x%02x', ord $1)/ge;
	return $line;
}

sub record {
	my ($fh) = @_;
	while ($buffer{$fh} =~ s/^([^\n]*)\n//) {
		print $log "$conn{$fh} $label{$fh}: " . shown($1) . "\n";
	}
}

sub hang_up {
	my ($fh, $who) = @_;
	my $other = $peer{$fh};
	for my $h ($fh, $other) {
		next unless defined $h;
		if (length($buffer{$h} // '')) {
			print $log "$conn{$h} $label{$h}: " . shown($buffer{$h}) . " (no newline)\n";
		}
	}
	print $log "$conn{$fh} -- closed by $who\n";
	for my $h ($fh, $other) {
		next unless defined $h;
		$select->remove($h);
		close $h;
		delete $peer{$h};
		delete $label{$h};
		delete $conn{$h};
		delete $buffer{$h};
	}
}

while (1) {
	for my $fh ($select->can_read) {
		if ($fh == $server) {
			my $client = $server->accept or next;
			my $up = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $upstream);
			if (!$up) {
				print $log "-- cannot connect to $upstream: $!\n";
				close $client;
				next;
			}
			$connections++;
			%peer = (%peer, $client => $up, $up => $client);
			$label{$client} = 'C';
			$label{$up} = 'S';
			$conn{$client} = $conn{$up} = $connections;
			$buffer{$client} = $buffer{$up} = '';
			$select->add($client, $up);
			print $log "$connections -- connected\n";
			next;
		}
		next unless exists $peer{$fh};
		my $got = sysread($fh, my $data, 65536);
		if (!$got) {
			hang_up($fh, $label{$fh} eq 'C' ? 'client' : 'server');
			next;
		}
		my $to = $peer{$fh};
		my $off = 0;
		while ($off < length $data) {
			my $n = syswrite($to, $data, length($data) - $off, $off);
			last unless defined $n && $n > 0;
			$off += $n;
		}
		$buffer{$fh} .= $data;
		record($fh);
		if ($off < length $data) {
			hang_up($to, $label{$to} eq 'C' ? 'client' : 'server');
		}
	}
}
