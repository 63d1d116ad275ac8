package fasttimeout

// retriedAcceptErrors is empty on Plan 9, whose system errors are strings
// with no errno to match: every accept error is returned as is.
var retriedAcceptErrors [0]error

// abortedAcceptErrors is empty on Plan 9 (see retriedAcceptErrors).
var abortedAcceptErrors [0]error
