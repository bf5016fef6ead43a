package orderer

import (
	"errors"
	"testing"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
)

// TestVerifyFetchedRefuses: a block with another number than asked for, or
// whose data does not match its header, is refused with ErrVerify. (The
// accepting path runs in 'memberd ledger fetch', TestLedgerCommands.)
func TestVerifyFetchedRefuses(t *testing.T) {
	b := &common.Block{Header: &common.BlockHeader{Number: 5}, Data: &common.BlockData{Data: [][]byte{[]byte("x")}}}
	if err := VerifyFetched(b, nil, 4, nil); !errors.Is(err, ErrVerify) {
		t.Fatalf("block 5 fetched as 4: %v, want ErrVerify", err)
	}
	if err := VerifyFetched(b, nil, 5, nil); !errors.Is(err, ErrVerify) {
		t.Fatalf("block whose data hash is not in its header: %v, want ErrVerify", err)
	}
}
