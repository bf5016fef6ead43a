package orderer

import (
	"errors"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/node/block"
)

// Sentinel errors. Every error from this package wraps one of them or one of
// node/block's admission errors; StatusOf maps them to Fabric statuses.
var (
	// ErrNotLeader: this node is not the raft leader and has no Forwarder;
	// the error text names the leader. Resubmit to the leader.
	ErrNotLeader = errors.New("this node is not the ordering leader")
	// ErrUnavailable: no leader, a leader change, or the submission was not
	// confirmed within SubmitTimeout. The envelope may or may not be ordered.
	ErrUnavailable = errors.New("ordering service unavailable")
	// ErrDuplicate: the tx id was recently committed or is being ordered.
	ErrDuplicate = errors.New("duplicate transaction id")
	// ErrForbidden: the creator is not a member of the current policy with
	// the role the request needs.
	ErrForbidden = errors.New("creator not authorised")
	// ErrNotImplemented: a request this node does not support.
	ErrNotImplemented = errors.New("not implemented")
	// ErrConfigUpdate: a CONFIG_UPDATE envelope (peer channel update,
	// configtxlator flows) was refused: the channel config changes only
	// through a signed policy version (answered FORBIDDEN).
	ErrConfigUpdate = errors.New("CONFIG_UPDATE refused")
	// ErrClosed: the node is closed.
	ErrClosed = errors.New("ordering node closed")
	// ErrCatchUp: the node lacks blocks that its log no longer holds and
	// could not fetch them from a peer.
	ErrCatchUp = errors.New("ordering node cannot catch up")
	// ErrBadRequest: a malformed or contradictory request (Deliver).
	ErrBadRequest = errors.New("bad request")
	// ErrNotFound: no such channel or block.
	ErrNotFound = errors.New("not found")
)

// StatusOf maps an error of Submit/Order (or nil) to the Fabric status that
// Broadcast answers with.
func StatusOf(err error) common.Status {
	switch {
	case err == nil:
		return common.Status_SUCCESS
	case errors.Is(err, block.ErrTooLarge):
		return common.Status_REQUEST_ENTITY_TOO_LARGE
	case errors.Is(err, ErrNotImplemented):
		return common.Status_NOT_IMPLEMENTED
	case errors.Is(err, block.ErrWrongChannel), errors.Is(err, ErrNotFound):
		return common.Status_NOT_FOUND
	case errors.Is(err, ErrForbidden), errors.Is(err, ErrConfigUpdate), errors.Is(err, block.ErrBadSignature), errors.Is(err, block.ErrHighS),
		errors.Is(err, block.ErrUnsupportedKey):
		return common.Status_FORBIDDEN
	case errors.Is(err, ErrNotLeader), errors.Is(err, ErrUnavailable), errors.Is(err, ErrClosed), errors.Is(err, ErrCatchUp):
		return common.Status_SERVICE_UNAVAILABLE
	default: // malformed, header type, tx id, no creator, duplicate, bad request
		return common.Status_BAD_REQUEST
	}
}
